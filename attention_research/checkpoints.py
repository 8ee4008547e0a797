"""Checkpoints that verify: orbax saves digests of every array; restores check them, fall back.

    manager = checkpoints.open_manager(directory, keep)
    checkpoints.save(manager, step, state, progress)
    found = checkpoints.restore_latest(manager, abstract_state)  # (step, state, progress) or None

A checkpoint holds two orbax items: "state" (the train state's arrays) and
"progress" (JSON: whatever the trainer passes, plus "digests", the SHA-256 of
every array of "state", computed from the device arrays before the save).

A restore reads the newest step and compares the digests. A checkpoint that
fails to read (a truncated file, a missing manifest or item, metadata that
does not parse) or to verify (a flipped bit, which orbax reads without
complaint) is moved to `<directory>/corrupt/<step>`, never deleted (it is
evidence, and it may be all there is), the log says which and why, and the
next older one is tried. With none left the run starts over, and says so. A
digest mismatch is never restored.

On many processes each one verifies what it reads, and all of them fall back
together if any one fails. A digest covers the whole array, so it does not
depend on the mesh: a checkpoint verifies on another one. Only process 0's
digests are saved, so an array sharded across processes (which no process
sees whole) is refused at save time until digests are kept per process.
"""

import hashlib
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

CORRUPT = "corrupt"


def open_manager(directory, keep):
  """An orbax CheckpointManager for `directory` with the items "state" and "progress".

  Saves are synchronous: a checkpoint the trainer reports is on disk. orbax
  writes each one under a temporary name and renames it when complete, so a
  kill during a save leaves the previous one as the newest.
  """
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False),
      item_names=("state", "progress"))


def digests(state):
  """{path of each array in `state`: SHA-256 of its dtype, shape and contents}."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  for path, leaf in leaves:
    if not (leaf.is_fully_addressable or leaf.is_fully_replicated):
      raise ValueError(f"checkpoint digests: state{jax.tree_util.keystr(path)} is sharded "
                       f"across processes; only process 0's digests are saved, so every "
                       f"array must be whole on every process (replicated)")
  return {jax.tree_util.keystr(path): _digest(leaf) for path, leaf in leaves}


def _digest(array):
  """SHA-256 of dtype, shape and the whole array's bytes: the same however it is sharded,
  so a checkpoint verifies on another mesh."""
  if array.is_fully_addressable:
    whole = np.asarray(jax.device_get(array))
  else:  # replicated over processes (digests() refuses the rest): any shard is the whole
    whole = np.asarray(array.addressable_shards[0].data)
  h = hashlib.sha256(f"{array.dtype} {array.shape}".encode())
  h.update(np.ascontiguousarray(whole).tobytes())
  return h.hexdigest()


def save(manager, step, state, progress):
  """Saves `state` and the JSON dict `progress` (with the state's digests) as `step`."""
  progress = dict(progress, digests=digests(state))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             progress=ocp.args.JsonSave(progress)))
  manager.wait_until_finished()


def restore_latest(manager, abstract_state):
  """(step, state, progress) of the newest checkpoint that reads and verifies, or None.

  Each one that does not is moved aside (see the module docstring).
  `abstract_state` holds ShapeDtypeStructs with shardings, as the state is laid out.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), progress=ocp.args.JsonRestore()))
      problem = _check(restored)
    except Exception as e:  # pylint: disable=broad-except  # any unreadable checkpoint
      problem = f"it does not read: {type(e).__name__}: {_first_line(e)}"
    problem = _any_process(problem)
    if problem is None:
      return step, restored["state"], restored["progress"]
    _move_aside(manager, step, problem)
  if steps:
    logging.warning("no checkpoint in %s reads and verifies: starting over from step 0",
                    manager.directory)
  return None


def _first_line(error):
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else repr(error)


def _check(restored):
  """None if the restored checkpoint matches its digests, else what is wrong."""
  progress = restored["progress"]
  if not isinstance(progress, dict):
    return f"its progress item is {type(progress).__name__}, not a JSON object"
  recorded = progress.get("digests")
  if recorded is None:  # written before checkpoints carried digests
    logging.warning("this checkpoint has no digests (an older version wrote it): restored "
                    "unverified")
    return None
  found = digests(restored["state"])
  wrong = sorted(k for k in set(recorded) | set(found) if recorded.get(k) != found.get(k))
  if wrong:
    return (f"{len(wrong)} of {len(found)} arrays do not match the digests recorded when it "
            f"was saved: {wrong[:3]}{' ...' if len(wrong) > 3 else ''}")
  return None


def _any_process(problem):
  """`problem` if this process found one, else another process's, else None; the same on
  every process, so that all restore the same step."""
  if jax.process_count() == 1:
    return problem
  flags = multihost_utils.process_allgather(np.int32(problem is not None))
  if problem is None and flags.any():
    return f"process {int(np.argmax(flags))} could not read or verify it"
  return problem


def _move_aside(manager, step, problem):
  """Moves checkpoint `step` to <directory>/corrupt/<step> (process 0) and tells orbax."""
  directory = os.fspath(manager.directory)
  target = os.path.join(directory, CORRUPT, str(step))
  failure = None
  if jax.process_index() == 0:
    n = 1
    while os.path.exists(target):  # one moved aside by an earlier run
      target = os.path.join(directory, CORRUPT, f"{step}.{n}")
      n += 1
    try:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.rename(os.path.join(directory, str(step)), target)
    except OSError as e:  # raised on every process below, none left waiting
      failure = e
  if _any_process(failure and str(failure)) is not None:
    raise RuntimeError(f"the checkpoint at step {step} in {directory} is corrupt ({problem}) "
                       f"and could not be moved to {target}: {failure}")
  manager.reload()
  logging.warning("the checkpoint at step %d in %s is corrupt (%s): moved to %s", step,
                  directory, problem, target)
