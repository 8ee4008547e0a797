"""Sweep grids and the resumable runner: kill, rerun, divergence, shards, retries,
claims shared by concurrent runners (and their stale cases), per-event files,
multi-process sweeps (and process 0 failing in one)."""

import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

from absl import flags
import jax
import numpy as np
import pytest

from attention_research import claims
from attention_research import preemption
from attention_research.sweep import grid as h
from attention_research.sweep import runner
from tests.fixtures import tiny_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------- grids

def test_sweep_fixed_product_zipit_chainit_build_the_written_out_grids():
  assert h.sweep("a", [1, 2]) == [{"a": 1}, {"a": 2}]
  assert h.fixed("b", "x") == [{"b": "x"}]
  assert h.product([h.sweep("a", [1, 2]), h.sweep("b", ["x", "y"]), h.fixed("c", 0)]) == [
      {"a": 1, "b": "x", "c": 0}, {"a": 1, "b": "y", "c": 0},
      {"a": 2, "b": "x", "c": 0}, {"a": 2, "b": "y", "c": 0}]
  assert h.zipit([h.sweep("layers", [2, 4]), h.sweep("d", [128, 90])]) == [
      {"layers": 2, "d": 128}, {"layers": 4, "d": 90}]
  assert h.chainit([h.sweep("a", [1]), h.product([h.sweep("b", [2]), h.fixed("c", 3)])]) == [
      {"a": 1}, {"b": 2, "c": 3}]


@pytest.mark.parametrize("build, message", [
    (lambda: h.sweep("a", []), "values.*empty"),
    (lambda: h.sweep("", [1]), "field name"),
    (lambda: h.zipit([h.sweep("a", [1, 2]), h.sweep("b", [1])]), "same number of trials"),
    (lambda: h.product([h.sweep("a", [1]), h.sweep("a", [2])]), r"\['a'\] are set by more"),
    (lambda: h.product([{"a": 1}]), "list of dicts"),
])
def test_bad_grids_are_named(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_trial_ids_are_stable_and_order_independent():
  overrides = {"num_heads": 8, "attention": "local", "task_options.seq_len": 128}
  # A literal: the id must not change between runs, processes or versions of
  # the grid code, or a rerun would not find its finished trials.
  assert h.trial_id(overrides) == h.trial_id(dict(reversed(list(overrides.items()))))
  assert h.trial_id(overrides) == STABLE_ID
  assert h.trial_id({"num_heads": 4}) != h.trial_id({"num_heads": 8})
  assert h.trial_name(overrides) == "attention=local,num_heads=8,task_options.seq_len=128"
  assert h.trial_name({"learning_rate": 0.001}) == "learning_rate=0.001"
  assert h.trial_name({}) == "(base)"
  # A whole dict (a task's options, say) would make the name as long as the dict.
  assert h.trial_name({"task": "order", "task_options": {"seq_len": 64, "num_markers": 2}}) == (
      "task=order,task_options={…}")


STABLE_ID = "78f9c43ef5"


def test_make_trials_applies_overrides_and_refuses_unknown_fields():
  base = tiny_sweep.get_config()
  trials = runner.make_trials(base, [{"num_heads": 1, "task_options.num_kv_pairs": 3}])
  (_, tid, name, overrides, config), = trials
  assert (config.num_heads, config.task_options.num_kv_pairs) == (1, 3)
  assert (base.num_heads, base.task_options.num_kv_pairs) == (2, 2)  # base untouched
  assert tid == h.trial_id(overrides) and name == "num_heads=1,task_options.num_kv_pairs=3"
  with pytest.raises(ValueError, match="'num_hedas'.*no such field"):
    runner.make_trials(base, [{"num_hedas": 1}])
  with pytest.raises(ValueError, match="no field 'model_options'"):
    runner.make_trials(base, [{"model_options.x": 1}])
  with pytest.raises(ValueError, match="twice"):
    runner.make_trials(base, [{"num_heads": 1}, {"num_heads": 1}])


# ------------------------------------------------------------------ runner

def tiny_trials(data_dir):
  base = tiny_sweep.get_config()
  base.data_dir = str(data_dir)
  return runner.make_trials(base, tiny_sweep.get_sweep(h))


def read_event_files(workdir):
  """The events under events/, read straight from their files, oldest first."""
  folder = os.path.join(workdir, "events")
  names = [n for n in (os.listdir(folder) if os.path.isdir(folder) else [])
           if not n.startswith(".")]  # one being written
  pattern = r"\d+-" + re.escape(socket.gethostname()) + r"-\d+-\d+\.json"
  assert all(re.fullmatch(pattern, n) for n in names), names
  names.sort(key=lambda n: int(n.split("-")[0]))
  return [json.load(open(os.path.join(folder, n))) for n in names]


def ends(workdir):
  return [(e["id"], e["status"]) for e in read_event_files(workdir) if e["event"] == "end"]


def claims_left(workdir):
  """Claim files (or their stale copies) anywhere in the sweep's workdir."""
  return sorted(n for _, _, names in os.walk(workdir)
                for n in names if n.startswith("claim.json"))


def test_divergence_is_recorded_shards_cover_every_trial_once_and_retry(tmp_path):
  trials = tiny_trials(tmp_path / "data")
  workdir = str(tmp_path / "sweep")
  for shard in (0, 1):
    runner.run(trials, workdir, num_shards=2, shard_index=shard)
  expected = {tid: ("diverged" if overrides["learning_rate"] > 1 else "completed")
              for _, tid, _, overrides, _ in trials}
  assert sorted(ends(workdir)) == sorted(expected.items())  # each trial exactly once
  assert claims_left(workdir) == []  # removed once each trial ended, completed or diverged
  assert all(not n.startswith(".") for n in os.listdir(os.path.join(workdir, "events")))
  for tid, status in expected.items():
    assert runner.trial_status(workdir, tid) == status
  listed = json.load(open(os.path.join(workdir, "sweep.json")))
  assert [t["id"] for t in listed["trials"]] == [t[1] for t in trials]

  # A rerun does nothing; --retry_failed runs the diverged ones again and
  # keeps the earlier attempts.
  assert runner.run(trials, workdir) == {}
  again = runner.run(trials, workdir, retry_failed=True)
  diverged = sorted(tid for tid, s in expected.items() if s == "diverged")
  assert sorted(again) == diverged and set(again.values()) == {"diverged"}
  assert sorted(os.listdir(os.path.join(workdir, "attempts"))) == [f"{t}.1" for t in diverged]

  table = runner.summary_table(trials, workdir)
  for _, tid, name, _, _ in trials:
    row = next(line for line in table.splitlines() if tid in line)
    assert name in row and expected[tid] in row


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
  trials = runner.make_trials(tiny_sweep.get_config(),
                              [{"data_dir": str(tmp_path / "data"), "num_heads": 3},  # 32 % 3
                               {"data_dir": str(tmp_path / "data"), "num_heads": 2}])
  statuses = runner.run(trials, str(tmp_path / "sweep"))
  assert list(statuses.values()) == ["failed", "completed"]
  failed = runner.read_result(str(tmp_path / "sweep"), trials[0][1])
  assert "d_model" in failed["error"]


def test_a_rerun_under_another_config_or_grid_is_refused(tmp_path):
  trials = tiny_trials(tmp_path / "data")[:1]
  workdir = str(tmp_path / "sweep")
  runner.run(trials, workdir)
  longer = tiny_sweep.get_config()
  longer.data_dir, longer.total_steps = str(tmp_path / "data"), 60
  result_before = open(os.path.join(runner.trial_dir(workdir, trials[0][1]), "result.json")).read()
  with pytest.raises(ValueError, match=r"different config \(fields \['total_steps'\]"):
    runner.run(runner.make_trials(longer, tiny_sweep.get_sweep(h))[:1], workdir)
  # The refusal is in the sweep's events; the trial's result is untouched.
  refused = [e for e in runner.read_events(workdir) if e["event"] == "refused"]
  assert [e["id"] for e in refused] == [trials[0][1]] and "total_steps" in refused[0]["error"]
  assert open(os.path.join(runner.trial_dir(workdir, trials[0][1]), "result.json")).read() == (
      result_before)
  with pytest.raises(ValueError, match="other trials"):
    runner.run(tiny_trials(tmp_path / "data"), workdir)


def write_event(workdir, time_ns, host, pid, number, **record):
  folder = os.path.join(workdir, "events")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f"{time_ns}-{host}-{pid}-{number}.json"), "w") as f:
    json.dump(record, f)


def test_every_trial_is_validated_before_the_first_runs(tmp_path):
  del tmp_path
  trials = runner.make_trials(tiny_sweep.get_config(),
                              h.sweep("num_heads", [2, 3]))  # d_model 32 is not a multiple of 3
  runner.check_trials(trials[:1], num_devices=1)
  with pytest.raises(ValueError, match=r"trial 2 \(num_heads=3\): config.d_model \(32\) must "
                                       r"be divisible by config.num_heads \(3\)"):
    runner.check_trials(trials, num_devices=1)


def test_events_are_files_read_in_time_order_and_deaths_are_open_starts(tmp_path):
  workdir = str(tmp_path)
  # 999 < 1000 as numbers but not as text: the order must be the time's.
  write_event(workdir, 999, "host-a", 7, 0, event="end", id="a", status="completed")
  write_event(workdir, 1000, "host-b", 8, 0, event="start", id="a")
  for time_ns, kind in [(5, "start"), (6, "end"), (7, "start")]:
    write_event(workdir, time_ns, "h", 9, time_ns, event=kind, id="b", status="failed")
  write_event(workdir, 1000, "host-b", 8, 1, event="start", id="c")  # same ns: by number
  write_event(workdir, 1000, "host-b", 8, 2, event="end", id="c", status="completed")
  # An event still being written (its temporary name) is not read; nor is a
  # line cut short in the events.jsonl of an older runner, whose starts count.
  open(os.path.join(workdir, "events", ".1001-h-9-0.json.tmp"), "w").write('{"ev')
  with open(os.path.join(workdir, "events.jsonl"), "w") as f:
    f.write(json.dumps({"event": "start", "id": "d"}) + "\n" + '{"event": "st')
  write_event(workdir, 2000, "h", 9, 3, event="start", id="d")
  assert [runner._deaths(workdir, t)[0] for t in "abcde"] == [1, 1, 0, 2, 0]
  assert [(e["id"], e["event"]) for e in runner.read_events(workdir)] == [
      ("d", "start"), ("b", "start"), ("b", "end"), ("b", "start"), ("a", "end"),
      ("a", "start"), ("c", "start"), ("c", "end"), ("d", "start")]


def test_a_trial_whose_process_keeps_dying_is_recorded_as_failed(tmp_path):
  trials = tiny_trials(tmp_path / "data")[:1]
  workdir = str(tmp_path / "sweep")
  tid = trials[0][1]
  os.makedirs(runner.trial_dir(workdir, tid))  # started (trial.json), then died twice
  open(os.path.join(runner.trial_dir(workdir, tid), "trial.json"), "w").write("{}")
  for death in range(runner.MAX_DEATHS):
    write_event(workdir, time.time_ns(), socket.gethostname(), 1, death, event="start", id=tid)
  assert runner.trial_status(workdir, tid) == "interrupted"
  assert runner.run(trials, workdir) == {}
  result = runner.read_result(workdir, tid)
  assert result["status"] == "failed" and "died" in result["error"]
  assert ends(workdir) == [(tid, "failed")] and claims_left(workdir) == []
  # A retry sets that attempt aside and gets a fresh count of deaths.
  done = lambda config, path: {"status": "completed", "final_eval": None}
  assert runner.run(trials, workdir, retry_failed=True, train_fn=done) == {tid: "completed"}
  assert os.listdir(os.path.join(workdir, "attempts")) == [f"{tid}.1"]
  assert runner.read_result(workdir, tid)["status"] == "completed"


class Death(BaseException):
  """A process dying mid-trial, in-process: no end event follows its start."""


def dies_after(new_checkpoint):
  """A train_fn that (if `new_checkpoint`) saves one more checkpoint step, then dies."""
  def train_fn(config, workdir):
    del config
    directory = os.path.join(workdir, "checkpoints")
    os.makedirs(directory, exist_ok=True)
    if new_checkpoint:
      steps = [int(n) for n in os.listdir(directory) if n.isdigit()]
      os.makedirs(os.path.join(directory, str(max(steps, default=0) + 10)))
    raise Death()
  return train_fn


def test_deaths_after_new_checkpoints_are_resumed_and_only_deaths_without_count(tmp_path):
  trials = tiny_trials(tmp_path / "data")[:1]
  workdir, other = str(tmp_path / "sweep"), str(tmp_path / "other")
  progressing = stuck = trials[0][1]
  # Three deaths (a spot VM reclaimed without notice), each after a new checkpoint.
  for _ in range(3):
    with pytest.raises(Death):
      runner.run(trials[:1], workdir, train_fn=dies_after(new_checkpoint=True))
  assert runner._deaths(workdir, progressing) == (0, [10, 10, 10])
  done = lambda config, path: {"status": "completed", "final_eval": None}
  assert runner.run(trials[:1], workdir, train_fn=done) == {progressing: "completed"}
  # A life with progress resets the count; two in a row without give the trial up.
  for new_checkpoint in (True, False, False):
    with pytest.raises(Death):
      runner.run(trials, other, train_fn=dies_after(new_checkpoint))
  assert runner._deaths(other, stuck) == (2, [10, 0, 0])
  assert runner.run(trials, other, train_fn=done) == {}
  error = runner.read_result(other, stuck)["error"]
  assert "died or failed 3 times" in error and "the last 2 without a new checkpoint" in error
  assert "[10, 0, 0]" in error


def preempted(config, path):
  """A train_fn that records a pre-emption, as the trainer does on SIGTERM."""
  del config
  result = {"status": "preempted", "step": 7, "final_eval": None}
  with open(os.path.join(path, "result.json"), "w") as f:
    json.dump(result, f)
  return result


def test_a_preempted_trial_stops_the_sweep_and_is_resumed_not_failed(tmp_path):
  trials = tiny_trials(tmp_path / "data")[:2]
  workdir = str(tmp_path / "sweep")
  assert runner.run(trials, workdir, train_fn=preempted) == {trials[0][1]: "preempted"}
  assert runner.trial_status(workdir, trials[0][1]) == "preempted"
  assert runner.trial_status(workdir, trials[1][1]) == "pending"  # not started
  assert ends(workdir) == [(trials[0][1], "preempted")]  # an end, not a death
  assert runner._deaths(workdir, trials[0][1])[1] == []
  done = lambda config, path: {"status": "completed", "final_eval": None}
  assert runner.run(trials, workdir, train_fn=done) == {t[1]: "completed" for t in trials}


def test_a_preempted_trial_failing_to_start_keeps_its_result_until_given_up(tmp_path):
  # A rerun that fails before training keeps the pre-empted result and its
  # checkpoints: a life without progress, its error in the events; two in a
  # row give the trial up, naming the error.
  trials = tiny_trials(tmp_path / "data")[:1]
  workdir = str(tmp_path / "sweep")
  runner.run(trials, workdir, train_fn=preempted)

  def fails_to_start(config, path):
    raise OSError("the data_dir is not mounted")
  for life in range(runner.MAX_DEATHS):
    assert runner.run(trials, workdir, train_fn=fails_to_start) == {trials[0][1]: "failed"}
    assert runner.trial_status(workdir, trials[0][1]) == "preempted"
    assert runner._deaths(workdir, trials[0][1]) == (life + 1, [0] * (life + 1))
  done = lambda config, path: {"status": "completed", "final_eval": None}
  assert runner.run(trials, workdir, train_fn=done) == {}  # given up
  result = runner.read_result(workdir, trials[0][1])
  assert result["status"] == "failed" and "the data_dir is not mounted" in result["error"]


def test_a_signal_between_trials_stops_the_sweep_before_the_next(tmp_path):
  trials = tiny_trials(tmp_path / "data")[:2]
  workdir = str(tmp_path / "sweep")

  def done_then_signal(config, path):  # a SIGTERM after the trial, before the next
    os.kill(os.getpid(), signal.SIGTERM)
    return {"status": "completed", "final_eval": None}
  with preemption.watch():
    assert runner.run(trials, workdir, train_fn=done_then_signal) == {trials[0][1]: "completed"}
    assert preemption.requested(synced=True)
  assert not preemption.requested(synced=True)  # spent once the watch ends
  assert runner.trial_status(workdir, trials[1][1]) == "pending"


def test_summary_shows_missing_trials_as_pending(tmp_path):
  trials = tiny_trials(tmp_path / "data")
  table = runner.summary_table(trials, str(tmp_path / "nothing_yet"))
  assert table.count("| pending |") == len(trials)


def test_killed_sweep_reruns_to_every_trial_completed_once(tmp_path):
  workdir = tmp_path / "sweep"
  command = [sys.executable, "-m", "experiments.sweep", "--config=tests/fixtures/tiny_sweep.py",
             f"--workdir={workdir}", f"--config.data_dir={tmp_path / 'data'}",
             "--config.total_steps=40",
             f"--jax_cache_dir={os.path.join(ROOT, 'tests', '.jax_cache')}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  # Kill once the first trial has ended and a later one has a checkpoint.
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    done = ends(workdir)
    started = list((workdir / "trials").glob("*/checkpoints/10")) if done else []
    if done and any(ends(workdir)[0][0] not in str(p) for p in started):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the sweep ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()

  listing = subprocess.run(command + ["--dry_run"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
  assert listing.returncode == 0, listing.stderr[-2000:]
  assert "interrupted" in listing.stdout and "pending" in listing.stdout

  rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  trials = json.load(open(workdir / "sweep.json"))["trials"]
  finished = ends(workdir)
  assert sorted(tid for tid, _ in finished) == sorted(t["id"] for t in trials)  # once each
  assert "| completed |" in rerun.stdout and "| diverged |" in rerun.stdout
  # The sweep ends with the tables its config declares, written into the workdir.
  written = sorted(os.listdir(workdir / "tables"))
  assert written == ["accuracy.md", "accuracy_0.png", "results.jsonl"], written
  table = (workdir / "tables" / "accuracy.md").read_text()
  assert "| 1 |" in table and table in rerun.stdout  # printed as written
  resumed = [runner.read_result(str(workdir), t["id"]).get("resumed_from_step") for t in trials]
  assert any(step and step >= 10 for step in resumed), resumed  # resumed, not restarted

  # A command-line value for a field the grid sets would be overwritten: refused.
  shadowed = subprocess.run(command + ["--config.num_heads=4", "--dry_run"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
  assert shadowed.returncode != 0 and "--config.num_heads" in shadowed.stderr


# ------------------------------------------------------------------ claims

def write_claim(workdir, tid, host, pid, age_s=0.0, **fields):
  """A claim as another process would have left it, its heartbeat `age_s` old."""
  path = os.path.join(runner.trial_dir(workdir, tid), "claim.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  then = time.time() - age_s
  with open(path, "w") as f:
    json.dump({"host": host, "pid": pid, "start_time": then, **fields}, f)
  os.utime(path, (then, then))
  return path


def dead_pid():
  process = subprocess.Popen(["true"])
  process.wait()
  return process.pid


def test_a_live_claim_is_skipped_as_running_and_a_stale_one_is_taken_over(tmp_path):
  trials = tiny_trials(tmp_path / "data")
  workdir = str(tmp_path / "sweep")
  t0, t1, t2, t3 = [t[1] for t in trials]
  here = socket.gethostname()
  live = [write_claim(workdir, t0, "another-host", 1),  # fresh heartbeat
          write_claim(workdir, t1, here, os.getppid())]  # a live process here
  write_claim(workdir, t2, here, dead_pid())  # its process is gone...
  open(os.path.join(runner.trial_dir(workdir, t2), "trial.json"), "w").write("{}")  # ...mid-trial
  write_claim(workdir, t3, "another-host", 1, age_s=100)  # stale only under a 60 s timeout
  before = [open(path).read() for path in live]
  assert [runner.trial_status(workdir, t) for t in (t0, t1, t2, t3)] == [
      "running", "running", "interrupted", "running"]
  assert runner.trial_status(workdir, t3, claim_timeout_s=60) == "pending"  # claim alone

  calls = []

  def train_fn(config, path):  # records which claim it ran under
    with open(os.path.join(path, "claim.json")) as f:
      claim = json.load(f)
    calls.append((os.path.basename(path), claim["host"], claim["pid"]))
    return {"status": "completed", "final_eval": None}

  with pytest.raises(ValueError, match="claim_timeout_s must be .* above HEARTBEAT_S"):
    runner.run(trials, workdir, train_fn=train_fn, claim_timeout_s=runner.HEARTBEAT_S)
  statuses = runner.run(trials, workdir, train_fn=train_fn, claim_timeout_s=60)
  assert statuses == {t0: "running", t1: "running", t2: "completed", t3: "completed"}
  assert calls == [(t2, here, os.getpid()), (t3, here, os.getpid())]  # each once, claimed
  assert [open(path).read() for path in live] == before  # the live claims untouched
  assert claims_left(workdir) == ["claim.json", "claim.json"]  # theirs; ours removed
  assert [runner.trial_status(workdir, t) for t in (t0, t1, t2, t3)] == [
      "running", "running", "completed", "completed"]
  assert "| running |" in runner.summary_table(trials, workdir)


def test_only_the_claim_judged_stale_is_removed(tmp_path):
  path = str(tmp_path / "claim.json")
  json.dump({"host": "h", "pid": 1, "token": "old"}, open(path, "w"))
  assert claims._remove(path, "old") and os.listdir(tmp_path) == []
  assert not claims._remove(path, "old")  # another process moved it first
  # A fresh claim replaced the stale one since it was read: it stays.
  json.dump({"host": "h2", "pid": 2, "token": "new"}, open(path, "w"))
  assert not claims._remove(path, "old")
  assert os.listdir(tmp_path) == ["claim.json"] and json.load(open(path))["token"] == "new"


def test_the_heartbeat_refreshes_a_claim_removed_once_its_trial_ends(tmp_path, monkeypatch):
  monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)
  trials = tiny_trials(tmp_path / "data")
  trials = [trials[0], trials[2]]  # num_heads 1, then 2
  workdir = str(tmp_path / "sweep")
  refreshed = []

  def train_fn(config, path):  # the second one fails without writing a result
    claim = os.path.join(path, "claim.json")
    first = os.stat(claim).st_mtime
    time.sleep(0.5)
    refreshed.append(os.stat(claim).st_mtime - first)
    if config.num_heads == 2:
      raise RuntimeError("out of cheese")
    return {"status": "completed", "final_eval": None}

  statuses = runner.run(trials, workdir, train_fn=train_fn)
  assert statuses == {trials[0][1]: "completed", trials[1][1]: "failed"}
  assert all(age > 0.2 for age in refreshed), refreshed  # heartbeats every 0.05 s
  assert claims_left(workdir) == []
  assert "out of cheese" in runner.read_result(workdir, trials[1][1])["error"]
  assert ends(workdir) == [(trials[0][1], "completed"), (trials[1][1], "failed")]


def test_a_trial_done_or_retried_elsewhere_after_the_plan_is_skipped(tmp_path):
  # Another process finishes (or retries) a trial after this one planned to
  # run it: under the claim, the runner looks again and leaves it be.
  trials = tiny_trials(tmp_path / "data")
  workdir = str(tmp_path / "sweep")
  t0, t1, t2, t3 = [t[1] for t in trials]
  calls = []

  def write_result(tid, status):
    with open(os.path.join(runner.trial_dir(workdir, tid), "result.json"), "w") as f:
      json.dump({"status": status, "final_eval": None}, f)

  def train_fn(config, path):
    tid = os.path.basename(path)
    calls.append(tid)
    if tid == t0:  # meanwhile another process ran t1 to completion
      os.makedirs(runner.trial_dir(workdir, t1), exist_ok=True)
      write_result(t1, "completed")
    if tid == t2 and os.path.exists(os.path.join(workdir, "attempts")):  # ... or retried t3
      os.rename(runner.trial_dir(workdir, t3), os.path.join(workdir, "attempts", f"{t3}.1"))
      os.makedirs(runner.trial_dir(workdir, t3))
      write_result(t3, "failed")
      return {"status": "completed", "final_eval": None}
    return {"status": "failed" if tid in (t2, t3) else "completed", "final_eval": None}

  assert runner.run(trials, workdir, train_fn=train_fn) == {t0: "completed", t2: "failed",
                                                             t3: "failed"}
  assert calls == [t0, t2, t3]
  calls.clear()
  assert runner.run(trials, workdir, retry_failed=True, train_fn=train_fn) == {t2: "completed"}
  assert calls == [t2]  # t3 had its retry elsewhere
  assert sorted(os.listdir(os.path.join(workdir, "attempts"))) == sorted([f"{t2}.1", f"{t3}.1"])
  assert claims_left(workdir) == []


def test_on_this_machine_a_claim_is_judged_by_its_process_not_its_heartbeat(tmp_path):
  trials = tiny_trials(tmp_path / "data")
  workdir = str(tmp_path / "sweep")
  t0, t1, t2, t3 = [t[1] for t in trials]
  here = socket.gethostname()
  # This process's own pid, but not a claim it holds: an earlier process that
  # had the same pid (a restarted container), killed mid-trial.
  write_claim(workdir, t0, here, os.getpid())
  open(os.path.join(runner.trial_dir(workdir, t0), "trial.json"), "w").write("{}")
  # A live process here, its heartbeat hours old (suspended, stopped): trusted.
  live = write_claim(workdir, t1, here, os.getppid(), age_s=10_000)
  write_claim(workdir, t2, "another-host", os.getppid(), age_s=10_000)  # there: stale
  # This host's name and a live pid, but from an earlier boot: only its heartbeat counts.
  write_claim(workdir, t3, here, os.getppid(), age_s=100, boot_id="an-earlier-boot")
  expected = ["interrupted", "running", "pending", "pending"]
  assert [runner.trial_status(workdir, t, claim_timeout_s=60) for t in (t0, t1, t2, t3)] == (
      expected)
  assert runner.trial_status(workdir, t3) == "running"  # under the default 300 s
  # The summary says the same, under the same timeout.
  status_column = lambda table: [row.split(" | ")[3] for row in table.splitlines()[2:]]
  assert status_column(runner.summary_table(trials, workdir, claim_timeout_s=60)) == expected
  assert status_column(runner.summary_table(trials, workdir))[3] == "running"

  done = lambda config, path: {"status": "completed", "final_eval": None}
  before = open(live).read()
  assert runner.run(trials, workdir, train_fn=done, claim_timeout_s=60) == {
      t0: "completed", t1: "running", t2: "completed", t3: "completed"}
  assert open(live).read() == before and claims_left(workdir) == ["claim.json"]


def test_a_claim_this_process_holds_is_live_to_it(tmp_path):
  path = str(tmp_path / "t" / "claim.json")
  with claims.held(path, 60) as token:
    assert token is not None and claims.acquire(path, 60) is None  # not taken over
    holder = claims.holder(path, 60)
    assert (holder["host"], holder["pid"], holder["token"]) == (
        socket.gethostname(), os.getpid(), token)
    with claims.held(path, 60) as second:
      assert second is None
    assert os.path.exists(path)  # the second, refused, removed nothing
  assert os.listdir(tmp_path / "t") == [] and claims.holder(path, 60) is None


def age(path, seconds):
  os.utime(path, (time.time() - seconds,) * 2)


def test_a_claim_without_a_pid_is_judged_by_its_age_and_a_new_one_is_never_empty(
    tmp_path, monkeypatch):
  # Empty (killed between an O_EXCL create and its write), or with no pid, even
  # from this host: its mtime is all there is to judge it by.
  path = str(tmp_path / "claim.json")
  for text in ["", json.dumps({"host": socket.gethostname()})]:
    open(path, "w").write(text)
    assert claims.holder(path, 60) == ({} if not text else {"host": socket.gethostname()})
    assert claims.acquire(path, 60) is None
    age(path, 100)
    assert claims.holder(path, 60) is None
    token = claims.acquire(path, 60)
    assert json.load(open(path))["token"] == token and os.listdir(tmp_path) == ["claim.json"]
    claims._release(path, token)

  # The claim appears whole: linked into place from a file already written.
  linked = []
  link = os.link

  def checked_link(source, target):
    linked.append(json.load(open(source)))
    link(source, target)

  monkeypatch.setattr(os, "link", checked_link)
  token = claims.acquire(path, 60)
  assert [c["token"] for c in linked] == [token] and linked[0]["pid"] == os.getpid()
  claims._release(path, token)

  # A filesystem without hard links: created with O_EXCL, written, still exclusive.
  def no_link(source, target):
    raise PermissionError(errno.EPERM, "Operation not permitted")

  monkeypatch.setattr(os, "link", no_link)
  token = claims.acquire(path, 60)
  assert json.load(open(path))["token"] == token and os.listdir(tmp_path) == ["claim.json"]
  assert claims.acquire(path, 60) is None


def test_the_heartbeat_outlives_failed_refreshes_and_reports_a_lost_claim_once(
    tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(claims, "HEARTBEAT_S", 0.01)
  path = str(tmp_path / "claim.json")
  utime, failed = os.utime, []

  def flaky_utime(target, *args, **kwargs):  # an NFS server that hiccups three times
    if len(failed) < 3:
      failed.append(target)
      raise OSError(errno.ESTALE, "Stale file handle")
    utime(target, *args, **kwargs)

  def wait_for(condition):
    deadline = time.time() + 10
    while not condition() and time.time() < deadline:
      time.sleep(0.01)
    return condition()

  monkeypatch.setattr(os, "utime", flaky_utime)
  caplog.set_level(logging.WARNING)
  with claims.held(path, 60):
    utime(path, (1.0, 1.0))
    assert wait_for(lambda: os.stat(path).st_mtime > 1.0)  # refreshed after the failures
    assert len(failed) == 3
    # Another process takes the claim over (this one looked stale to it).
    theirs = {"host": "another-host", "pid": 1, "token": "theirs"}
    runner._write_json(path, theirs)
    assert wait_for(lambda: any("lost the claim" in r.getMessage() for r in caplog.records))
    utime(path, (2.0, 2.0))
    time.sleep(0.2)  # twenty beats
    assert os.stat(path).st_mtime == 2.0  # no longer refreshed
  assert json.load(open(path)) == theirs and os.listdir(tmp_path) == ["claim.json"]  # kept
  messages = [r.getMessage() for r in caplog.records]
  assert sum("could not refresh" in m for m in messages) == 3
  assert sum("lost the claim" in m for m in messages) == 1


def test_process_0_tells_the_others_before_it_raises(tmp_path, monkeypatch):
  trials = tiny_trials(tmp_path / "data")[:2]
  workdir = str(tmp_path / "sweep")
  sent, calls = [], []

  def train_fn(config, path):
    calls.append(os.path.basename(path))
    return {"status": "completed", "final_eval": None}

  def event(workdir, **record):  # recording the end of the first trial fails
    if record["event"] == "end":
      raise OSError(errno.ENOSPC, "No space left on device")

  # Process 0: every broadcast says whether it went well, the last one that it did not.
  monkeypatch.setattr(runner, "_from_process_0", lambda v: sent.append(list(v)) or np.array(v))
  monkeypatch.setattr(runner, "_event", event)
  with pytest.raises(OSError, match="No space left"):
    runner.run(trials, workdir, train_fn=train_fn)
  run = runner.ACTIONS.index("run")
  assert sent == [[1, 0, 0], [1, run], [0]]  # plan (2 trials, no attempts yet), run, failed
  assert calls == [trials[0][1]] and claims_left(workdir) == []

  # Another process, told so, raises too: at the plan, at a trial, after one.
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  for told, trained in [([[0, 0, 0]], []), ([[1, 0, 0], [0, 0]], []),
                        ([[1, 0, 0], [1, run], [0]], [trials[0][1]])]:
    replies = iter(told)
    monkeypatch.setattr(runner, "_from_process_0", lambda v: np.array(next(replies)))
    calls.clear()
    with pytest.raises(RuntimeError, match="process 0 stopped the sweep"):
      runner.run(trials, str(tmp_path / "elsewhere"), train_fn=train_fn)
    assert calls == trained and next(replies, None) is None  # it heard everything, no more
    assert not os.path.exists(tmp_path / "elsewhere")


def test_dry_run_lists_on_process_0_alone_under_the_claim_timeout(tmp_path, monkeypatch, capsys):
  from experiments import sweep as sweep_binary  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "sweep")
  tids = [t[1] for t in tiny_trials(tmp_path / "data")]
  write_claim(workdir, tids[1], "another-host", 1, age_s=100)
  argv = ["sweep", f"--config={os.path.join(ROOT, 'tests', 'fixtures', 'tiny_sweep.py')}",
          f"--workdir={workdir}", "--dry_run", "--claim_timeout_s=60", "--jax_cache_dir="]
  flags.FLAGS(argv)
  try:
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    sweep_binary.main(argv[:1])
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    sweep_binary.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  lines = capsys.readouterr().out.splitlines()
  assert [line.split()[1] for line in lines] == tids
  assert [line.split()[4] for line in lines] == ["pending"] * 4  # the 100 s old claim: stale


# ------------------------------------------------------- several processes

def driver(workdir, tmp_path, *extra):
  return [sys.executable, "-m", "tests.fixtures.sweep_driver", f"--workdir={workdir}",
          f"--data_dir={tmp_path / 'data'}", f"--log={tmp_path / 'log'}", *extra]


def driver_env():
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1",
              JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, "tests", ".jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")


def run_together(commands, timeout=240):
  """Starts the commands at once; [(returncode, stdout, stderr)] once all have ended."""
  processes = [subprocess.Popen(c, cwd=ROOT, env=driver_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for c in commands]
  try:
    outputs = [p.communicate(timeout=timeout) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  return [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs)]


def read_calls(tmp_path):
  """{pid: [train_fn call records, in order]} from the drivers' logs."""
  calls = {}
  for name in os.listdir(tmp_path / "log"):
    with open(tmp_path / "log" / name) as f:
      records = [json.loads(line) for line in f]
    calls[records[0]["pid"]] = records
  return calls


def test_two_runners_at_once_run_every_trial_once(tmp_path):
  workdir = tmp_path / "sweep"
  command = driver(workdir, tmp_path, "--train=sleep", "--sleep=1", f"--ready={tmp_path / 'r'}",
                   "--peers=2")
  outcomes = run_together([command, command])
  assert [rc for rc, _, _ in outcomes] == [0, 0], [err[-2000:] for _, _, err in outcomes]
  tids = [t[1] for t in tiny_trials(tmp_path / "data")]
  ran = [r["id"] for records in read_calls(tmp_path).values() for r in records]
  assert sorted(ran) == sorted(tids)  # every trial, exactly once between the two
  statuses = [json.loads(out.splitlines()[-1]) for _, out, _ in outcomes]
  for tid in tids:  # one ran it; the other found it claimed, or already done
    assert sorted(s.get(tid, "-") for s in statuses) in (["-", "completed"],
                                                         ["completed", "running"]), statuses
  assert "running" in [*statuses[0].values(), *statuses[1].values()]  # they did overlap
  assert sorted(ends(str(workdir))) == sorted((t, "completed") for t in tids)
  assert claims_left(str(workdir)) == []


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def distributed(workdirs, tmp_path, *extra):
  """One driver command per workdir: process i of a jax.distributed run over them all."""
  port = free_port()
  return [driver(w, tmp_path, f"--coordinator=localhost:{port}",
                 f"--num_processes={len(workdirs)}", f"--process_id={i}", *extra)
          for i, w in enumerate(workdirs)]


def test_a_two_process_sweep_trains_each_trial_once_with_both(tmp_path):
  workdir = str(tmp_path / "sweep")
  outcomes = run_together(distributed([workdir, workdir], tmp_path, "--train=real",
                                      "--trials=2", "--total_steps=10"))
  assert [rc for rc, _, _ in outcomes] == [0, 0], [err[-3000:] for _, _, err in outcomes]
  trials = tiny_trials(tmp_path / "data")[:2]  # lr 3e-3 completes, lr 1e30 diverges
  expected = {trials[0][1]: "completed", trials[1][1]: "diverged"}
  assert [json.loads(out.splitlines()[-1]) for _, out, _ in outcomes] == [expected] * 2
  calls = read_calls(tmp_path)
  by_process = {records[0]["process"]: [r["id"] for r in records] for records in calls.values()}
  assert by_process == {0: list(expected), 1: list(expected)}  # the same trials, in order
  assert {t: runner.read_result(workdir, t)["status"] for t in expected} == expected
  assert ends(workdir) == list(expected.items())  # each trial once
  main_pid = next(pid for pid, records in calls.items() if records[0]["process"] == 0)
  assert {e["pid"] for e in read_event_files(workdir)} == {main_pid}  # process 0 alone
  assert claims_left(workdir) == []


def test_every_process_follows_process_0s_view_of_the_workdir(tmp_path):
  # Process 0 sees trial 0 completed and trial 1 claimed by another host;
  # process 1's view (another folder here: a stale or missing mount) is empty.
  seen, unseen = str(tmp_path / "sweep"), str(tmp_path / "elsewhere")
  t0, t1, t2, t3 = [t[1] for t in tiny_trials(tmp_path / "data")]
  os.makedirs(runner.trial_dir(seen, t0))
  with open(os.path.join(runner.trial_dir(seen, t0), "result.json"), "w") as f:
    json.dump({"status": "completed", "final_eval": None}, f)
  claim = write_claim(seen, t1, "another-host", 1)
  outcomes = run_together(distributed([seen, unseen], tmp_path, "--train=collective",
                                      "--sleep=0"))
  assert [rc for rc, _, _ in outcomes] == [0, 0], [err[-3000:] for _, _, err in outcomes]
  expected = {t1: "running", t2: "completed", t3: "completed"}
  assert [json.loads(out.splitlines()[-1]) for _, out, _ in outcomes] == [expected] * 2
  for records in read_calls(tmp_path).values():
    assert [(r["id"], r["every_process"]) for r in records] == [(t2, [2, 2]), (t3, [3, 3])]
  assert not os.path.exists(unseen)  # process 1 wrote nothing
  assert os.path.exists(claim) and claims_left(seen) == ["claim.json"]
  assert [runner.read_result(seen, t)["status"] for t in (t2, t3)] == ["completed"] * 2

  # A sweep process 0 refuses (another trial list than sweep.json's) stops
  # every process, instead of leaving the others waiting for it.
  outcomes = run_together(distributed([seen, unseen], tmp_path, "--train=collective",
                                      "--trials=3"))
  assert [rc != 0 for rc, _, _ in outcomes] == [True, True]
  assert "other trials" in outcomes[0][2] and "process 0 stopped the sweep" in outcomes[1][2]


def test_process_0_failing_mid_sweep_stops_every_process(tmp_path):
  # Process 0 fails to record trial 1's start (after claiming it): the other
  # process must stop too, not wait for it in a broadcast or a collective.
  workdir = str(tmp_path / "sweep")
  outcomes = run_together(distributed([workdir, workdir], tmp_path, "--train=collective",
                                      "--sleep=0", "--fail_on=start:1"), timeout=120)
  assert [rc != 0 for rc, _, _ in outcomes] == [True, True]
  assert "no space left on device (on purpose" in outcomes[0][2], outcomes[0][2][-3000:]
  assert "process 0 stopped the sweep" in outcomes[1][2], outcomes[1][2][-3000:]
  trials = tiny_trials(tmp_path / "data")
  t0, t1 = trials[0][1], trials[1][1]
  for records in read_calls(tmp_path).values():  # trial 0, together; nothing after
    assert [(r["id"], r["every_process"]) for r in records] == [(t0, [0, 0])]
  assert ends(workdir) == [(t0, "completed")] and claims_left(workdir) == []
  # A rerun takes it from there.
  done = lambda config, path: {"status": "completed", "final_eval": None}
  assert runner.trial_status(workdir, t1) == "interrupted"
  assert runner.run(trials, workdir, train_fn=done) == {t[1]: "completed" for t in trials[1:]}
