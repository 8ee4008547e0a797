"""Sweep grids and the resumable runner: kill, rerun, divergence, shards, retries."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

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


def ends(workdir):
  with open(os.path.join(workdir, "events.jsonl")) as f:
    events = [json.loads(line) for line in f]
  return [(e["id"], e["status"]) for e in events if e["event"] == "end"]


def test_divergence_is_recorded_shards_cover_every_trial_once_and_retry(tmp_path):
  trials = tiny_trials(tmp_path / "data")
  workdir = str(tmp_path / "sweep")
  for shard in (0, 1):
    runner.run(trials, workdir, num_shards=2, shard_index=shard)
  expected = {tid: ("diverged" if overrides["learning_rate"] > 1 else "completed")
              for _, tid, _, overrides, _ in trials}
  assert sorted(ends(workdir)) == sorted(expected.items())  # each trial exactly once
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
  with pytest.raises(ValueError, match=r"different config \(fields \['total_steps'\]"):
    runner.run(runner.make_trials(longer, tiny_sweep.get_sweep(h))[:1], workdir)
  with pytest.raises(ValueError, match="other trials"):
    runner.run(tiny_trials(tmp_path / "data"), workdir)


def test_a_trial_whose_process_keeps_dying_is_recorded_as_failed(tmp_path):
  trials = tiny_trials(tmp_path / "data")[:1]
  workdir = str(tmp_path / "sweep")
  tid = trials[0][1]
  os.makedirs(runner.trial_dir(workdir, tid))
  with open(os.path.join(workdir, "events.jsonl"), "w") as f:  # two starts, no end
    for _ in range(runner.MAX_DEATHS):
      f.write(json.dumps({"event": "start", "id": tid, "shard": 0}) + "\n")
  assert runner.run(trials, workdir) == {}
  result = runner.read_result(workdir, tid)
  assert result["status"] == "failed" and "died" in result["error"]


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
    done = os.path.exists(workdir / "events.jsonl") and ends(workdir)
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
  resumed = [runner.read_result(str(workdir), t["id"]).get("resumed_from_step") for t in trials]
  assert any(step and step >= 10 for step in resumed), resumed  # resumed, not restarted

  # A command-line value for a field the grid sets would be overwritten: refused.
  shadowed = subprocess.run(command + ["--config.num_heads=4", "--dry_run"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
  assert shadowed.returncode != 0 and "--config.num_heads" in shadowed.stderr
