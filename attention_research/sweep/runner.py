"""The resumable sweep runner: every trial of a grid through the trainer, once.

    trials = runner.make_trials(base_config, grid)
    runner.run(trials, workdir, num_shards=2, shard_index=0)

Layout of a sweep's workdir:
  sweep.json                 the config file, its tables (see tables.py) and every
                             trial: index, id, name, overrides
  trials/<id>/               the trainer's workdir for that trial (result.json, ...)
  trials/<id>/trial.json     the trial's id, name and overrides
  attempts/<id>.<n>/         earlier failed or diverged attempts, kept by --retry_failed
  events.jsonl               one line per trial start and end, from every shard

Running the same command again skips completed trials and resumes an
interrupted one from its checkpoint (the trainer does that), so no trial runs
twice to completion and none is lost. A failed or diverged trial keeps its
result.json (status and reason) and is skipped until `retry_failed`. Shards
(`num_shards`, `shard_index`) take every N-th trial, so several hosts can
share one workdir.
"""

import copy
import json
import os
import time

from absl import logging

from attention_research import train
from attention_research.sweep import grid as grid_lib

DONE = "completed"
UNSUCCESSFUL = ("failed", "diverged")
# A trial whose process died this many times without a result (killed by the
# OOM killer, say) is recorded as failed instead of being resumed forever.
MAX_DEATHS = 2
# Fields a finished trial's config may differ in and still count as done.
BOOKKEEPING = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "data_dir")


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
  path = os.path.join(trial_dir(workdir, tid), "result.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def trial_status(workdir, tid):
  """'completed', 'failed', 'diverged', 'interrupted' (started, no result) or 'pending'."""
  result = read_result(workdir, tid)
  if result is not None:
    return result["status"]
  return "interrupted" if os.path.isdir(trial_dir(workdir, tid)) else "pending"


def _write_json(path, obj):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=repr)
  os.replace(tmp, path)


def _event(workdir, **record):
  # One short line per append: lines from several shards do not interleave.
  with open(os.path.join(workdir, "events.jsonl"), "a") as f:
    f.write(json.dumps({"time": time.time(), **record}, default=repr) + "\n")


def _set_aside(workdir, tid):
  """Moves an unsuccessful attempt to attempts/<id>.<n>, so a retry starts fresh."""
  attempts = os.path.join(workdir, "attempts")
  os.makedirs(attempts, exist_ok=True)
  numbers = [int(name.rsplit(".", 1)[1]) for name in os.listdir(attempts)
             if name.startswith(tid + ".")]
  attempt = max(numbers, default=0) + 1
  os.rename(trial_dir(workdir, tid), os.path.join(attempts, f"{tid}.{attempt}"))


def _check_same_config(workdir, tid, name, config):
  """A trial's earlier result counts only if it came from this trial's config."""
  changed = train.config_changes(config, os.path.join(trial_dir(workdir, tid), "config.json"),
                                 BOOKKEEPING)
  if changed:
    raise ValueError(
        f"trial {name!r} in {trial_dir(workdir, tid)} ran with a different config (fields "
        f"{changed} differ), e.g. a quick look with other --config.* values or another scale; "
        f"use a new --workdir")


def _deaths(workdir, tid):
  """Starts of this trial that no end followed: its process died mid-trial."""
  path = os.path.join(workdir, "events.jsonl")
  if not os.path.exists(path):
    return 0
  open_starts = 0
  with open(path) as f:
    for line in f:
      event = json.loads(line)
      if event["id"] == tid:
        open_starts = open_starts + 1 if event["event"] == "start" else 0
  return open_starts


def _check_same_trials(workdir, trials):
  """Every shard and rerun of a sweep must share its trial list."""
  path = os.path.join(workdir, "sweep.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = [t["id"] for t in json.load(f)["trials"]]
  if saved != [t[1] for t in trials]:
    raise ValueError(f"{path} lists other trials than this sweep config gives (a changed grid "
                     f"or config?); use a new --workdir")


def check_shard(num_shards, shard_index):
  if not isinstance(num_shards, int) or num_shards < 1:
    raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
  if not isinstance(shard_index, int) or not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index!r}")


def run(trials, workdir, *, num_shards=1, shard_index=0, retry_failed=False, config_path=None,
        tables=(), train_fn=train.train_and_evaluate):
  """Runs this shard's trials that still need running; returns {id: status} for them.

  `config_path` and `tables` (the sweep config's table specs) are recorded in
  sweep.json for the tables binary.
  """
  check_shard(num_shards, shard_index)
  _check_same_trials(workdir, trials)
  os.makedirs(os.path.join(workdir, "trials"), exist_ok=True)
  _write_json(os.path.join(workdir, "sweep.json"), {
      "config": config_path, "tables": list(tables),
      "trials": [{"index": index, "id": tid, "name": name, "overrides": overrides}
                 for index, tid, name, overrides, _ in trials]})
  mine = [t for t in trials if t[0] % num_shards == shard_index]
  todo = []
  for trial in mine:
    _check_same_config(workdir, trial[1], trial[2], trial[4])
    status = trial_status(workdir, trial[1])
    if status == "interrupted" and _deaths(workdir, trial[1]) >= MAX_DEATHS:
      _write_json(os.path.join(trial_dir(workdir, trial[1]), "result.json"), {
          "status": "failed", "final_eval": None,
          "error": f"the process died {MAX_DEATHS} times during this trial without a result "
                   f"(out of memory?)"})
      status = "failed"
    if status == DONE or (status in UNSUCCESSFUL and not retry_failed):
      logging.info("trial %d/%d %s: %s already, skipped", trial[0] + 1, len(trials), trial[2],
                   status)
    else:
      todo.append(trial)
  logging.info("shard %d of %d: %d of its %d trials to run (%d in the sweep)", shard_index,
               num_shards, len(todo), len(mine), len(trials))

  statuses, started = {}, time.time()
  for done, (index, tid, name, overrides, config) in enumerate(todo):
    if trial_status(workdir, tid) in UNSUCCESSFUL:
      _set_aside(workdir, tid)
    path = trial_dir(workdir, tid)
    os.makedirs(path, exist_ok=True)
    _write_json(os.path.join(path, "trial.json"),
                {"index": index, "id": tid, "name": name, "overrides": overrides})
    logging.info("trial %d/%d %s (%s): starting", index + 1, len(trials), name, tid)
    _event(workdir, event="start", id=tid, shard=shard_index)
    try:
      result = train_fn(config, path)
    except Exception as e:  # recorded in its result.json by the trainer; the sweep goes on
      logging.exception("trial %s failed", name)
      result = read_result(workdir, tid) or {"status": "failed", "error": repr(e)}
    statuses[tid] = result["status"]
    _event(workdir, event="end", id=tid, shard=shard_index, status=result["status"])
    elapsed = time.time() - started
    eta = elapsed / (done + 1) * (len(todo) - done - 1)
    final = result.get("final_eval") or {}
    logging.info("trial %d/%d %s: %s%s in %.0f s; sweep ETA %.0f s", index + 1, len(trials),
                 name, result["status"],
                 f", eval accuracy {final['accuracy']:.4f}, loss {final['loss']:.4f}"
                 if final else f" ({result.get('error', '')})",
                 result.get("wall_time_s", 0.0), eta)
  return statuses


def summary_table(trials, workdir, metric="accuracy"):
  """A Markdown table of every trial: name, status, final eval metric and loss, wall time."""
  rows = ["| # | trial | id | status | eval " + metric + " | eval loss | wall s |",
          "|---:|:---|:---|:---|---:|---:|---:|"]
  for index, tid, name, _, _ in trials:
    result = read_result(workdir, tid) or {}
    status = result.get("status", trial_status(workdir, tid))
    final = result.get("final_eval") or {}
    value = f"{final[metric]:.4f}" if metric in final else ""
    loss = f"{final['loss']:.4f}" if "loss" in final else ""
    wall = f"{result['wall_time_s']:.0f}" if "wall_time_s" in result else ""
    rows.append(f"| {index + 1} | {name} | {tid} | {status} | {value} | {loss} | {wall} |")
  return "\n".join(rows)
