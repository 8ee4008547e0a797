"""Checkpoints that verify: orbax saves digests of every array; restores check them, fall back.

    manager = checkpoints.open_manager(directory, keep)
    checkpoints.save(manager, step, state, progress)
    found = checkpoints.restore_latest(manager, abstract_state)  # (step, state, progress) or None

A checkpoint holds two orbax items: "state" (the train state's arrays) and
"progress" (JSON: whatever the trainer passes, plus "digests", a digest of
every array of "state", computed from the device arrays before the save).

A restore reads the newest step and compares the digests. A checkpoint that
fails to read (a truncated file, a missing manifest or item, metadata that
does not parse) or to verify (a flipped bit, which orbax reads without
complaint) is moved to `<directory>/corrupt/<step>`, never deleted (it is
evidence, and it may be all there is), the log says which and why, and the
next older one is tried. With none left the run starts over, and says so. A
digest mismatch is never restored.

On many processes all of them read, then all of them verify (the digests are
computed together), and all fall back together if any one fails. A digest
covers the whole array and does not depend on how it is cut (see `digests`):
a checkpoint verifies on another mesh and another number of processes, and
arrays split across processes (FSDP over hosts) are covered.
"""

import hashlib
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from attention_research import storage

CORRUPT = "corrupt"


def open_manager(directory, keep):
  """An orbax CheckpointManager for `directory` with the items "state" and "progress".

  Saves are synchronous: a checkpoint the trainer reports is on disk. orbax
  writes each one under a temporary name and renames it when complete, so a
  kill during a save leaves the previous one as the newest (on an object store,
  which has no renames, orbax marks a finished one with a commit file instead).
  """
  return ocp.CheckpointManager(
      storage.absolute(directory),  # a local path made absolute, gs:// as it is
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False),
      item_names=("state", "progress"))


DIGEST_FORMAT = "mix64-v1"  # saved beside the digests; another format is not compared
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_OFFSET = np.uint64(0x632BE59BD9B4E019)
_CHUNK = 1 << 20  # elements a pass: the temporaries stay a few MB


def digests(state):
  """{path of each array in `state`: a digest of its dtype, shape and elements}.

  Each element enters as mix(bits_i xor p_i), p_i a number drawn from its flat
  position i and mix SplitMix64's finaliser (a bijection), summed mod 2^64;
  the sum then goes through SHA-256 with the dtype and shape. A sum over
  positions does not depend on how the array is cut: each process adds its own
  shards (one copy of each), and the processes add their sums, so the digest is
  the same on any mesh and any number of processes. Changing one element always
  changes it; more changes go unseen with chance about 2^-64. Every process must
  call it (it gathers).
  """
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  sums = np.array([_local_sum(leaf) for _, leaf in leaves], np.uint64)
  if jax.process_count() > 1:  # uint32 halves: jax gathers 64-bit integers only with x64 on
    halves = np.stack([sums & np.uint64(0xFFFFFFFF), sums >> np.uint64(32)], -1)
    every = np.asarray(multihost_utils.process_allgather(halves.astype(np.uint32)))
    every = every.astype(np.uint64)
    sums = (every[..., 0] | (every[..., 1] << np.uint64(32))).sum(0, dtype=np.uint64)
  return {jax.tree_util.keystr(path): hashlib.sha256(
      f"{leaf.dtype} {tuple(leaf.shape)} {int(total)}".encode()).hexdigest()
          for (path, leaf), total in zip(leaves, sums)}


def _local_sum(array):
  """This process's part of the sum: its shards with replica id 0."""
  if not isinstance(array, jax.Array):
    array = np.asarray(array)
    return _block_sum(array, tuple(slice(0, n) for n in array.shape), array.shape)
  total = 0
  for shard in array.addressable_shards:
    if shard.replica_id == 0:
      total += _block_sum(np.asarray(shard.data), shard.index, array.shape)
  return total % (1 << 64)


def _mix(z):
  """SplitMix64's finaliser on uint64 (a bijection that spreads every bit)."""
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def _block_sum(data, index, shape):
  """The sum over one block of an array of `shape`, the block at `index` (slices)."""
  data = np.asarray(data, order="C")  # (ascontiguousarray would make a scalar 1-d)
  bits = data.reshape(-1).view(np.dtype(f"u{data.dtype.itemsize}"))
  starts = [0 if s.start is None else s.start for s in index]
  strides = np.cumprod((1,) + tuple(shape[:0:-1]))[::-1] if shape else ()  # in elements
  total = 0
  for first in range(0, bits.size, _CHUNK):
    count = min(_CHUNK, bits.size - first)
    pos = np.zeros(count, np.uint64)
    if data.ndim:
      where = np.unravel_index(np.arange(first, first + count), data.shape)
      for axis_index, start, stride in zip(where, starts, strides):
        pos += (axis_index.astype(np.uint64) + np.uint64(start)) * np.uint64(stride)
    chunk = bits[first:first + count].astype(np.uint64)
    total += int(_mix(chunk ^ (pos * _GOLDEN + _OFFSET)).sum(dtype=np.uint64))
  return total % (1 << 64)


def save(manager, step, state, progress):
  """Saves `state` and the JSON dict `progress` (with the state's digests) as `step`."""
  progress = dict(progress, digests=digests(state), digest_format=DIGEST_FORMAT)
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
      problem = None
    except Exception as e:  # pylint: disable=broad-except  # any unreadable checkpoint
      problem = f"it does not read: {type(e).__name__}: {_first_line(e)}"
    problem = _any_process(problem)
    if problem is None:  # every process read it: now all verify it together
      problem = _any_process(_check(restored))
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
  """None if the restored checkpoint matches its digests, else what is wrong.

  The digests are computed first, whatever the progress item holds, so that
  every process gathers the same number of times."""
  found = digests(restored["state"])
  progress = restored["progress"]
  if not isinstance(progress, dict):
    return f"its progress item is {type(progress).__name__}, not a JSON object"
  recorded = progress.get("digests")
  if recorded is None or progress.get("digest_format") != DIGEST_FORMAT:
    logging.warning("this checkpoint has no digests of format %s (an older version wrote "
                    "it): restored unverified", DIGEST_FORMAT)
    return None
  if not isinstance(recorded, dict):
    return f"its digests are {type(recorded).__name__}, not a JSON object"
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
    while storage.path(target).exists():  # one moved aside by an earlier run
      target = os.path.join(directory, CORRUPT, f"{step}.{n}")
      n += 1
    try:
      storage.path(target).parent.mkdir(parents=True, exist_ok=True)
      storage.move(os.path.join(directory, str(step)), target)
    except Exception as e:  # pylint: disable=broad-except  # any client's; raised on all below
      failure = e
  if _any_process(failure and str(failure)) is not None:
    raise RuntimeError(f"the checkpoint at step {step} in {directory} is corrupt ({problem}) "
                       f"and could not be moved to {target}: {failure}")
  manager.reload()
  logging.warning("the checkpoint at step %d in %s is corrupt (%s): moved to %s", step,
                  directory, problem, target)
