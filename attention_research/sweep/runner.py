"""The resumable sweep runner: every trial of a grid through the trainer, once.

    trials = runner.make_trials(base_config, grid)
    runner.run(trials, workdir, num_shards=2, shard_index=0)

Layout of a sweep's workdir:
  sweep.json                 the config file, its tables (see tables.py) and every
                             trial: index, id, name, overrides
  trials/<id>/               the trainer's workdir for that trial (result.json, ...)
  trials/<id>/trial.json     the trial's id, name and overrides
  trials/<id>/claim.json     while a process runs the trial: its host, pid and start
                             time; its mtime is a heartbeat (see claims.py)
  attempts/<id>.<n>/         earlier failed or diverged attempts, kept by --retry_failed
  events/                    one file per trial start and end, from every shard:
                             <time_ns>-<host>-<pid>-<seq>.json, written whole (see
                             storage.py: atomic on POSIX, NFS and gs://, where appending
                             to one shared file is not)

The workdir may be a local path or a gs:// URL: every file goes through
storage.py, and the claims through its conditional writes.

Running the same command again skips completed trials and resumes an
interrupted one from its checkpoint (the trainer does that), so no trial runs
twice to completion and none is lost. A failed or diverged trial keeps its
result.json (status and reason) and is skipped until `retry_failed`. A
pre-empted trial (SIGTERM or SIGINT: the trainer checkpoints and records
status "preempted") is unfinished, never failed: the runner stops there, and
the next run resumes it. A trial whose process dies (SIGKILL, the OOM killer)
is resumed too; it is given up as failed only after MAX_DEATHS deaths in a
row that each left no new checkpoint. Shards
(`num_shards`, `shard_index`) take every N-th trial, so several hosts can
share one workdir.

A process runs a trial only while it holds the trial's claim (claims.py):
two copies of one command (a rerun while the first still runs, two hosts given
the same shard) share the trials instead of corrupting each other's; a trial
claimed elsewhere shows as "running". A claim whose process is gone (not
alive on this machine; on another, no heartbeat for `claim_timeout_s`,
STALE_AFTER_S by default) is taken over, and its trial resumed.

On a multi-host slice (`jax.distributed`) every process runs every trial, as
one multi-process training run: process 0 decides which trials run, from its
view of the workdir, and broadcasts that to the others; it alone writes
sweep.json, trial.json, result.json (when train_fn wrote none), claims and
events. If it fails in any of that, it tells the others, and every process
raises: none is left waiting for it.
"""

import contextlib
import copy
import itertools
import json
import os
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from attention_research import claims
from attention_research import preemption
from attention_research import storage
from attention_research import train
from attention_research.sweep import grid as grid_lib

DONE = "completed"
UNSUCCESSFUL = ("failed", "diverged")
# A trial whose process died this many times in a row without a result and
# without a new checkpoint (killed by the OOM killer at its first step, say)
# is recorded as failed instead of being resumed forever. A death after a new
# checkpoint (a spot VM reclaimed without notice) resets the count.
MAX_DEATHS = 2
PREEMPTED = "preempted"
# Fields a finished trial's config may differ in and still count as done.
BOOKKEEPING = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "data_dir",
               "mesh", "context_parallel", "profile_steps")
CLAIM = "claim.json"
# The claims' timing (see claims.py), here too as part of the runner's API.
HEARTBEAT_S = claims.HEARTBEAT_S
STALE_AFTER_S = claims.STALE_AFTER_S
HOST = claims.HOST
# What process 0 tells the others to do with the next trial.
ACTIONS = ("run", "skip", "running")
FINISHED = -1  # in a plan: the trial needs no run
_EVENT_NUMBERS = itertools.count()  # orders one process's events within a nanosecond


def make_trials(base_config, grid):
  """[(index, id, name, overrides, config)] for a grid over `base_config`.

  Every override must name an existing field (a silently added key is how a
  sweep runs the wrong experiment); ids must be unique (no trial twice).
  """
  trials, seen = [], {}
  for index, overrides in enumerate(grid):
    config = copy.deepcopy(base_config)
    for field, value in overrides.items():
      _set_field(config, field, value, overrides)
    tid = grid_lib.trial_id(overrides)
    if tid in seen:
      raise ValueError(f"the grid has trial {grid_lib.trial_name(overrides)!r} twice "
                       f"(indices {seen[tid]} and {index})")
    seen[tid] = index
    trials.append((index, tid, grid_lib.trial_name(overrides), overrides, config))
  return trials


def check_trials(trials, num_devices=None):
  """Validates every trial's config as the trainer will (ValueError naming the trial)."""
  num_devices = len(jax.devices()) if num_devices is None else num_devices
  for index, _, name, _, config in trials:
    try:
      train.validate_config(config, num_devices)
    except ValueError as e:
      raise ValueError(f"trial {index + 1} ({name}): {e}") from None


def _set_field(config, field, value, overrides):
  *parents, last = field.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node:
      raise ValueError(f"trial {grid_lib.trial_name(overrides)!r}: override {field!r}: the "
                       f"config has no field {'.'.join(parents[:i + 1])!r}")
    node = node[part]
  if last not in node:
    raise ValueError(f"trial {grid_lib.trial_name(overrides)!r}: override {field!r}: the "
                     f"config has no such field; fields here: {sorted(node.keys())}")
  node[last] = value


def trial_dir(workdir, tid):
  return os.path.join(workdir, "trials", tid)


def read_result(workdir, tid):
  """The trial's result.json as a dict, or None if it has none yet."""
  return train.read_result(trial_dir(workdir, tid))


def trial_status(workdir, tid, claim_timeout_s=None):
  """'completed', 'failed', 'diverged' (its result), 'running' (unfinished, a live claim),
  'preempted' (its result; no live claim), 'interrupted' (started, no result, no live
  claim) or 'pending'."""
  status = _progress(workdir, tid)
  if status in (DONE, *UNSUCCESSFUL):
    return status
  holder = claims.holder(_claim_path(workdir, tid), _claim_timeout(claim_timeout_s))
  return "running" if holder is not None else status


def _claim_path(workdir, tid):
  return os.path.join(trial_dir(workdir, tid), CLAIM)


def _claim_timeout(claim_timeout_s):
  """Seconds after which another machine's unrefreshed claim is stale (None: STALE_AFTER_S)."""
  timeout_s = claims.STALE_AFTER_S if claim_timeout_s is None else claim_timeout_s
  if (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
      or timeout_s <= claims.HEARTBEAT_S):
    raise ValueError(f"claim_timeout_s must be a number of seconds above HEARTBEAT_S="
                     f"{claims.HEARTBEAT_S}, got {claim_timeout_s!r}")
  return timeout_s


def _progress(workdir, tid):
  """The trial's status as its files say, claims aside: a claim alone is not a start."""
  result = read_result(workdir, tid)
  if result is not None:
    return result["status"]
  names = storage.listdir(trial_dir(workdir, tid))
  return "interrupted" if any(not n.startswith(CLAIM) for n in names) else "pending"


def _write_json(path, obj):
  storage.write_json(path, obj, indent=2, sort_keys=True, default=repr)


# ------------------------------------------------------------------ events

def _event(workdir, **record):
  """Records one event as its own file in events/, written whole (storage.write_json)."""
  directory = os.path.join(workdir, "events")
  storage.path(directory).mkdir(parents=True, exist_ok=True)
  now = time.time_ns()
  name = f"{now}-{HOST}-{os.getpid()}-{next(_EVENT_NUMBERS)}.json"
  storage.write_json(os.path.join(directory, name),
                     {"time": now / 1e9, "host": HOST, "pid": os.getpid(), **record}, default=repr)


def _event_order(name):
  time_ns, rest = name[:-len(".json")].split("-", 1)
  host, pid, number = rest.rsplit("-", 2)
  return int(time_ns), host, int(pid), int(number)


def read_events(workdir):
  """Every trial start and end of the sweep, from every shard, in time order."""
  events = []
  legacy = storage.path(workdir) / "events.jsonl"  # one shared file, before events/
  if legacy.exists():
    for line in legacy.read_text().splitlines():
      with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
        events.append(json.loads(line))
  directory = os.path.join(workdir, "events")
  names = storage.listdir(directory)
  for name in sorted((n for n in names if n.endswith(".json") and not n.startswith(".")),
                     key=_event_order):
    events.append(storage.read_json(os.path.join(directory, name)))
  return events


def _latest_checkpoint(workdir, tid):
  return train.latest_checkpoint_step(trial_dir(workdir, tid))


def _deaths(workdir, tid):
  """(deaths in a row without progress, the steps each life made) for this trial.

  A life is a start that no end followed: its process died mid-trial (or
  failed before training, leaving an earlier life's "preempted" result). The
  steps it made are the newest checkpoint's step at the next start (or now)
  less that at its own start; None where a start did not record it (an older
  runner's), which counts as no progress.
  """
  starts = []
  for event in read_events(workdir):
    if event["id"] == tid and event["event"] in ("start", "end"):
      starts = starts + [event] if event["event"] == "start" else []
  marks = [e.get("checkpoint_step") for e in starts] + [_latest_checkpoint(workdir, tid)]
  made = [None if a is None or b is None else b - a for a, b in zip(marks, marks[1:])]
  stuck = 0
  for steps in made:
    stuck = 0 if steps is not None and steps > 0 else stuck + 1
  return stuck, made


# ------------------------------------------------------------------ trials

def _last_attempt(workdir, tid):
  """The number of the trial's latest attempt under attempts/, 0 if none."""
  names = storage.listdir(os.path.join(workdir, "attempts"))
  return max((int(n.rsplit(".", 1)[1]) for n in names if n.startswith(tid + ".")), default=0)


def _set_aside(workdir, tid):
  """Moves an unsuccessful attempt to attempts/<id>.<n>, so a retry starts fresh.

  Entry by entry, so that the claim stays; result.json goes last, so a kill
  midway leaves a trial that still reads as unsuccessful.
  """
  source = trial_dir(workdir, tid)
  target = os.path.join(workdir, "attempts", f"{tid}.{_last_attempt(workdir, tid) + 1}")
  storage.path(target).mkdir(parents=True)
  for name in sorted(storage.listdir(source), key=lambda n: n == "result.json"):
    if not name.startswith(CLAIM):
      storage.move(os.path.join(source, name), os.path.join(target, name))


def _check_same_config(workdir, tid, name, config):
  """A trial's earlier result counts only if it came from this trial's config."""
  changed = train.config_changes(config, os.path.join(trial_dir(workdir, tid), "config.json"),
                                 BOOKKEEPING)
  if changed:
    raise ValueError(
        f"trial {name!r} in {trial_dir(workdir, tid)} ran with a different config (fields "
        f"{changed} differ), e.g. a quick look with other --config.* values or another scale; "
        f"use a new --workdir")


def _check_same_trials(workdir, trials):
  """Every shard and rerun of a sweep must share its trial list."""
  path = os.path.join(workdir, "sweep.json")
  try:
    saved = [t["id"] for t in storage.read_json(path)["trials"]]
  except FileNotFoundError:
    return
  if saved != [t[1] for t in trials]:
    error = (f"{path} lists other trials than this sweep config gives (a changed grid, "
             f"seeds or config?); use a new --workdir")
    _event(workdir, event="refused", id=None, error=error)
    raise ValueError(error)


def check_shard(num_shards, shard_index):
  if not isinstance(num_shards, int) or num_shards < 1:
    raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
  if not isinstance(shard_index, int) or not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index!r}")


def _from_process_0(values):
  """Process 0's `values` (small ints) on every process.

  The processes of a multi-host run train each trial together, so they must
  take the same trials in the same order, whatever each one's view of the
  shared workdir (a stale NFS cache, a missing mount).
  """
  values = np.asarray(values, np.int32)
  if jax.process_count() == 1:
    return values
  return np.asarray(multihost_utils.broadcast_one_to_all(values))


def _agreed(size, fn, *args):
  """fn(*args) run on process 0 alone, and the `size` small ints it returns, on every process.

  If fn raises there, every process raises (process 0 its own error), instead
  of the others waiting forever for process 0 in the next broadcast or in
  train_fn's collectives.
  """
  values, error = [0] * size, None
  if jax.process_index() == 0:
    try:
      values = fn(*args) or []
    except Exception as e:  # pylint: disable=broad-except  # raised below, once all know
      error = e
  agreed = _from_process_0([error is None, *values])
  if error is not None:
    raise error
  if not agreed[0]:
    raise RuntimeError("process 0 stopped the sweep with an error; its log says which")
  return [int(v) for v in agreed[1:]]


def _finished(status, retry_failed):
  return status == DONE or (status in UNSUCCESSFUL and not retry_failed)


def _plan(trials, mine, workdir, retry_failed, config_path, tables):
  """Records sweep.json; for each trial of this shard's `mine`: FINISHED if it needs no
  run, else the number of its latest attempt (see _decide)."""
  _check_same_trials(workdir, trials)
  (storage.path(workdir) / "trials").mkdir(parents=True, exist_ok=True)
  _write_json(os.path.join(workdir, "sweep.json"), {
      "config": config_path, "tables": list(tables),
      "trials": [{"index": index, "id": tid, "name": name, "overrides": overrides}
                 for index, tid, name, overrides, _ in trials]})
  plan = []
  for index, tid, name, _, config in mine:
    try:
      _check_same_config(workdir, tid, name, config)
    except ValueError as e:  # nothing of the trial's is touched; the events say why
      _event(workdir, event="refused", id=tid, error=str(e))
      raise
    status = _progress(workdir, tid)
    if _finished(status, retry_failed):
      logging.info("trial %d/%d %s: %s already, skipped", index + 1, len(trials), name, status)
      plan.append(FINISHED)
    else:
      plan.append(_last_attempt(workdir, tid))
  return plan


def _agreed_action(fn, *args):
  """fn(*args), one of ACTIONS, decided on process 0 alone, on every process (see _agreed)."""
  return ACTIONS[_agreed(1, lambda: [ACTIONS.index(fn(*args))])[0]]


def _claim_and_start(claim, trial, workdir, num_trials, retry_failed, last_attempt, timeout_s,
                     shard_index):
  """What to do with `trial` (one of ACTIONS), decided on process 0.

  'running' if another process holds its claim; else this process holds it
  (until `claim`, an ExitStack, closes) and looks again at the trial's files:
  'skip', or 'run', and then starts it (trial.json, a start event).
  """
  index, tid, name, overrides, _ = trial
  path = _claim_path(workdir, tid)
  if claim.enter_context(claims.held(path, timeout_s)) is None:
    holder = claims.holder(path, timeout_s) or {}
    logging.info("trial %d/%d %s: claimed by host %s, pid %s since %s, skipped (if that "
                 "process is not this sweep's, remove %s)", index + 1, num_trials, name,
                 holder.get("host"), holder.get("pid"), time.ctime(holder.get("start_time", 0)),
                 path)
    return "running"
  action, status = _decide(workdir, trial, num_trials, retry_failed, last_attempt)
  if action == "run":
    if status in UNSUCCESSFUL:
      _set_aside(workdir, tid)
    _write_json(os.path.join(trial_dir(workdir, tid), "trial.json"),
                {"index": index, "id": tid, "name": name, "overrides": overrides})
    _event(workdir, event="start", id=tid, shard=shard_index,
           checkpoint_step=_latest_checkpoint(workdir, tid))
  return action


def _decide(workdir, trial, num_trials, retry_failed, last_attempt):
  """('run' or 'skip', the trial's status) for a trial whose claim this process holds, from
  its files now.

  Since the plan, another process may have run it, or (under --retry_failed)
  retried it: `last_attempt` is its attempt number at planning time.
  """
  index, tid, name = trial[:3]
  status = _progress(workdir, tid)
  stuck, made = _deaths(workdir, tid)
  # A pre-empted trial's result.json stays while later lives die or fail to start.
  if status in ("interrupted", PREEMPTED) and stuck >= MAX_DEATHS:
    errors = [e["error"] for e in read_events(workdir)
              if e["id"] == tid and e["event"] == "error"]
    error = (f"the process died or failed {len(made)} times during this trial without a "
             f"result, the last {stuck} without a new checkpoint (steps each life made: "
             f"{made}){'; its last error: ' + errors[-1] if errors else '; out of memory?'}")
    _write_json(os.path.join(trial_dir(workdir, tid), "result.json"),
                {"status": "failed", "final_eval": None, "error": error})
    _event(workdir, event="end", id=tid, status="failed")  # a retry starts a fresh count
    status = "failed"
  retried = status in UNSUCCESSFUL and _last_attempt(workdir, tid) != last_attempt
  if _finished(status, retry_failed) or retried:
    logging.info("trial %d/%d %s: %s already, skipped", index + 1, num_trials, name, status)
    return "skip", status
  return "run", status


def _train(trial, workdir, num_trials, train_fn):
  """Trains one trial (every process calls this); its result dict."""
  index, tid, name, _, config = trial
  logging.info("trial %d/%d %s (%s): starting", index + 1, num_trials, name, tid)
  try:
    return train_fn(config, trial_dir(workdir, tid))
  except Exception as e:  # pylint: disable=broad-except  # recorded; the sweep goes on
    logging.exception("trial %s failed", name)
    written = read_result(workdir, tid)  # the trainer's, with its traceback, if it wrote one
    if written is not None and written["status"] == "failed":
      return written
    return {"status": "failed", "error": f"{type(e).__name__}: {e}"}


def _finish(workdir, tid, shard_index, result):
  """Records the trial's end (on process 0)."""
  written = read_result(workdir, tid)
  if written is not None and written["status"] == PREEMPTED and result["status"] == "failed":
    # Failed before training, so the trainer kept an earlier life's result
    # and its checkpoints stand: a life without progress, not an end (see
    # _deaths), and the error is in the events.
    _event(workdir, event="error", id=tid, shard=shard_index, error=result.get("error"))
    return
  if written is None:  # a train_fn that wrote no result: the outcome must last
    _write_json(os.path.join(trial_dir(workdir, tid), "result.json"), result)
  _event(workdir, event="end", id=tid, shard=shard_index, status=result["status"])


def run(trials, workdir, *, num_shards=1, shard_index=0, retry_failed=False, config_path=None,
        tables=(), train_fn=train.train_and_evaluate, claim_timeout_s=None):
  """Runs this shard's trials that still need running; returns {id: status} for them.

  A pre-empted trial ends the run (this process is about to be reclaimed): its
  status is "preempted", and the trials after it are not started.

  A trial whose claim another live process holds is skipped and reported as
  "running"; another machine's claim whose heartbeat is older than
  `claim_timeout_s` (default STALE_AFTER_S) is taken over. `config_path` and
  `tables` (the sweep config's table specs) are recorded in sweep.json for the
  tables binary.
  """
  check_shard(num_shards, shard_index)
  timeout_s = _claim_timeout(claim_timeout_s)
  mine = [t for t in trials if t[0] % num_shards == shard_index]
  plan = _agreed(len(mine), _plan, trials, mine, workdir, retry_failed, config_path, tables)
  todo = [(trial, last) for trial, last in zip(mine, plan) if last != FINISHED]
  logging.info("shard %d of %d: %d of its %d trials to run (%d in the sweep)", shard_index,
               num_shards, len(todo), len(mine), len(trials))

  statuses, started = {}, time.time()
  for done, (trial, last_attempt) in enumerate(todo):
    if preemption.requested(synced=True):  # noted between trials (the binary watches)
      logging.warning("pre-empted: the sweep stops; run the same command again to resume")
      break
    with contextlib.ExitStack() as claim:  # process 0's claim on the trial, held to its end
      action = _agreed_action(_claim_and_start, claim, trial, workdir, len(trials),
                              retry_failed, last_attempt, timeout_s, shard_index)
      if action == "running":
        statuses[trial[1]] = action
      elif action == "run":
        result = _train(trial, workdir, len(trials), train_fn)
        _agreed(0, _finish, workdir, trial[1], shard_index, result)
        statuses[trial[1]] = result["status"]
        eta = (time.time() - started) / (done + 1) * (len(todo) - done - 1)
        _log_result(trial, len(trials), result, eta)
        if result["status"] == PREEMPTED:  # this process is about to be reclaimed
          logging.warning("pre-empted: the sweep stops; run the same command again to resume")
          break
  return statuses


def _log_result(trial, num_trials, result, eta):
  index, _, name = trial[:3]
  final = result.get("final_eval") or {}
  outcome = (f", eval accuracy {final['accuracy']:.4f}, loss {final['loss']:.4f}" if final else
             f" ({result.get('error', '')})")
  logging.info("trial %d/%d %s: %s%s in %.0f s; sweep ETA %.0f s", index + 1, num_trials, name,
               result["status"], outcome, result.get("wall_time_s", 0.0), eta)


def summary_table(trials, workdir, metric="accuracy", claim_timeout_s=None):
  """A Markdown table of every trial: name, status, final eval metric and loss, wall time.

  A trial with no result and a live claim (see run's `claim_timeout_s`) shows as "running".
  """
  rows = ["| # | trial | id | status | eval " + metric + " | eval loss | wall s |",
          "|---:|:---|:---|:---|---:|---:|---:|"]
  for index, tid, name, _, _ in trials:
    result = read_result(workdir, tid) or {}
    status = result.get("status") or trial_status(workdir, tid, claim_timeout_s)
    final = result.get("final_eval") or {}
    value = f"{final[metric]:.4f}" if metric in final else ""
    loss = f"{final['loss']:.4f}" if "loss" in final else ""
    wall = f"{result['wall_time_s']:.0f}" if "wall_time_s" in result else ""
    rows.append(f"| {index + 1} | {name} | {tid} | {status} | {value} | {loss} | {wall} |")
  return "\n".join(rows)
