"""The trainer end to end on tiny configs: learning, resume, devices, errors."""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from attention_research import train
from configs.tasks import mqar as mqar_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, **overrides):
  """A 1-layer decoder on 24-token MQAR with 2 pairs: seconds per run."""
  c = mqar_config.get_config("scale=cpu")
  c.task_options = dict(vocab_size=32, seq_len=24, num_kv_pairs=2, num_train=512, num_test=64)
  c.max_len = 24
  c.data_dir = str(data_dir)
  c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 1, 32, 2, 64
  c.batch_size, c.total_steps, c.warmup_steps = 16, 40, 5
  c.learning_rate = 3e-3
  c.log_every, c.eval_every, c.checkpoint_every = 5, 20, 10
  for name, value in overrides.items():
    c[name] = value
  return c


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_scalars(workdir):
  """TensorBoard scalars {(tag, step): value}, parsed from the TFRecord framing."""
  from tensorboardX.proto import event_pb2
  scalars = {}
  for name in sorted(os.listdir(workdir)):
    if not name.startswith("events.out.tfevents"):
      continue
    with open(os.path.join(workdir, name), "rb") as f:
      raw = f.read()
    pos = 0
    while pos < len(raw):
      (length,) = struct.unpack("<Q", raw[pos:pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
      pos += 12 + length + 4  # length, its crc, payload, its crc
      for value in event.summary.value:
        scalars[(value.tag, event.step)] = value.simple_value
  return scalars


def test_a_sparse_pattern_reaching_every_key_is_reported(tmp_path):
  # local's default window (128) covers all 24 tokens: dense attention, said once.
  config = tiny_config(tmp_path / "data", attention="local", total_steps=5, checkpoint_every=5)
  result = train.train_and_evaluate(config, str(tmp_path / "dense"))
  assert result["status"] == "completed"
  assert len(result["warnings"]) == 1 and "attends to every key at length 24" in (
      result["warnings"][0])
  assert json.load(open(tmp_path / "dense" / "result.json"))["warnings"] == result["warnings"]
  config.attention_options = {"window": 4}
  result = train.train_and_evaluate(config, str(tmp_path / "sparse"))
  assert result["status"] == "completed" and "warnings" not in result


def test_schedules_match_their_formulas():
  c = tiny_config("/unused", learning_rate=2.0, warmup_steps=10, total_steps=110)
  for name, expected in [
      ("constant", lambda s: 2.0 * min(1, (s + 1) / 10)),
      ("cosine", lambda s: 2.0 * min(1, (s + 1) / 10) * (
          0.5 * (1 + np.cos(np.pi * np.clip((s - 10) / 100, 0, 1))))),
      ("rsqrt", lambda s: 2.0 * min(1, (s + 1) / 10) * np.sqrt(10 / max(s + 1, 10)))]:
    c.schedule = name
    schedule = train.learning_rate_schedule(c)
    for step in (0, 4, 9, 10, 50, 109, 200):
      np.testing.assert_allclose(float(schedule(step)), expected(step), rtol=1e-5, atol=1e-6,
                                 err_msg=f"{name} at step {step}")


def test_training_learns_and_writes_its_records(tmp_path):
  c = tiny_config(tmp_path / "data", total_steps=60)
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(c, workdir)

  assert result["status"] == "completed"
  saved = json.load(open(os.path.join(workdir, "result.json")))
  assert saved["final_eval"] == result["final_eval"]
  assert saved["num_params"] > 0 and saved["flops_per_token"] > 0 and saved["wall_time_s"] > 0
  assert 0 < saved["num_block_params"] < saved["num_params"]
  assert saved["train_step_time_s"] == pytest.approx(1.0 / saved["train_steps_per_s"])
  # An LM task reports perplexity per target token: exp of the mean loss.
  assert saved["final_eval"]["perplexity"] == pytest.approx(np.exp(saved["final_eval"]["loss"]))
  # ... and bits per token (per byte on a byte-level task): the loss in nats over ln 2.
  assert saved["final_eval"]["bits_per_token"] == pytest.approx(
      saved["final_eval"]["loss"] / np.log(2))
  assert json.load(open(os.path.join(workdir, "config.json")))["total_steps"] == 60

  records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_records = [r for r in records if "loss" in r]
  assert [r["step"] for r in train_records] == list(range(5, 61, 5))
  for r in train_records:
    assert {"loss", "accuracy", "learning_rate", "grad_norm", "steps_per_s",
            "tokens_per_s"} <= set(r)
  # Learning: the loss at the end is well below the loss at the start (log 32
  # = 3.47 for a uniform guess over the vocabulary).
  assert train_records[-1]["loss"] < 0.8 * train_records[0]["loss"]
  eval_records = [r for r in records if "eval_loss" in r]
  assert eval_records[-1]["eval_loss"] == result["final_eval"]["loss"]

  scalars = read_scalars(workdir)
  for r in train_records:
    assert scalars[("train/loss", r["step"])] == pytest.approx(r["loss"], rel=1e-6)
  assert scalars[("eval/accuracy", 60)] == pytest.approx(
      result["final_eval"]["accuracy"], rel=1e-6)
  # One prefix per tag: eval/loss, never eval/eval_loss.
  assert not [tag for tag, _ in scalars if tag.startswith("eval/eval_")]


def test_bfloat16_training_tracks_float32(tmp_path):
  """bfloat16 compute (float32 parameters and residual stream) learns like float32."""
  finals = {}
  for dtype in ("float32", "bfloat16"):
    c = tiny_config(tmp_path / "data", total_steps=60, compute_dtype=dtype)
    result = train.train_and_evaluate(c, str(tmp_path / dtype))
    assert result["status"] == "completed"
    finals[dtype] = result["final_eval"]["loss"]
  # Both learn (a uniform guess is log 32 = 3.47) and end close, but not
  # identical: the bfloat16 run did compute in bfloat16.
  assert finals["float32"] < 0.8 * np.log(32) and finals["bfloat16"] < 0.8 * np.log(32)
  assert finals["bfloat16"] == pytest.approx(finals["float32"], rel=0.15)
  assert finals["bfloat16"] != finals["float32"]


def test_non_finite_loss_stops_as_diverged(tmp_path):
  c = tiny_config(tmp_path / "data", learning_rate=1e30, warmup_steps=0, grad_clip=0.0,
                  total_steps=40)
  result = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert result["status"] == "diverged"
  assert 1 <= result["diverged_step"] <= 40
  assert f"step {result['diverged_step']}" in result["error"]
  saved = json.load(open(tmp_path / "run" / "result.json"))
  assert saved["status"] == "diverged" and saved["final_eval"] is None


def test_a_crash_is_recorded_as_failed(tmp_path):
  blocker = tmp_path / "not_a_dir"
  blocker.write_text("a file where the data directory should be")
  c = tiny_config(blocker / "data")
  with pytest.raises(Exception):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  saved = json.load(open(tmp_path / "run" / "result.json"))
  assert saved["status"] == "failed" and saved["error"] and "Traceback" in saved["traceback"]


@pytest.mark.parametrize("field, value, message", [
    ("task", "imagenet", "config.task: unknown task 'imagenet'; allowed: ['listops', 'mqar'"),
    ("schedule", "linear", "config.schedule: unknown schedule 'linear'; allowed: ['cosine'"),
    ("model", "classifier", "config.model='classifier' cannot train on task 'mqar' .*"
                            "allowed: ['decoder']"),
    ("batch_size", 0, "config.batch_size"),
    ("total_steps", 0, "config.total_steps"),
    ("learning_rate", -1.0, "config.learning_rate"),
    ("num_eval_batches", 0, "config.num_eval_batches"),
    ("max_len", 20, "config.max_len=20 is shorter than task 'mqar''s examples .*integer >= 24"),
    ("profile_steps", "3", "config.profile_steps='3': allowed: 'a,b', two train steps with "
                           "1 <= a <= b <= total_steps=40"),
    ("profile_steps", "5,2", "config.profile_steps='5,2'"),
    ("profile_steps", "1,41", "config.profile_steps='1,41'"),
])
def test_bad_trainer_fields_are_named_before_compiling(tmp_path, field, value, message):
  c = tiny_config(tmp_path / "data")
  c[field] = value
  pattern = message.replace(".", r"\.").replace("[", r"\[").replace(r"\.*", ".*")
  with pytest.raises(ValueError, match=pattern):
    train.validate_config(c, num_devices=1)


def test_batch_must_divide_over_devices(tmp_path):
  c = tiny_config(tmp_path / "data", batch_size=12)
  with pytest.raises(ValueError, match=r"config\.batch_size=12 .* data x fsdp = 8 x 1 = 8"):
    train.validate_config(c, num_devices=8)


def test_bad_task_options_are_named(tmp_path):
  c = tiny_config(tmp_path / "data")
  c.task_options.num_kv_pairs = -1
  with pytest.raises(ValueError, match="num_kv_pairs"):
    train.validate_config(c, num_devices=1)


def listing(workdir):
  """{path: bytes} of every file under workdir."""
  return {os.path.relpath(os.path.join(d, n), workdir): open(os.path.join(d, n), "rb").read()
          for d, _, names in os.walk(workdir) for n in names}


def test_a_checkpoint_resumes_only_under_its_own_config(tmp_path):
  c = tiny_config(tmp_path / "data", total_steps=10, checkpoint_every=10)
  first = train.train_and_evaluate(c, str(tmp_path / "run"))
  before = listing(tmp_path / "run")
  # A rerun of the finished run keeps its result, speed and wall time included.
  assert train.train_and_evaluate(c, str(tmp_path / "run")) == first
  assert first["train_steps_per_s"] > 0 and listing(tmp_path / "run") == before
  # A refused rerun touches nothing: the completed result stays.
  c.learning_rate = 1e-2
  with pytest.raises(ValueError, match=r"fields \['learning_rate'\] differ"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert listing(tmp_path / "run") == before
  c.learning_rate, c.total_steps = 3e-3, 15  # a longer run of the same config may resume
  assert train.train_and_evaluate(c, str(tmp_path / "run"))["resumed_from_step"] == 10


def test_a_config_refused_in_a_fresh_workdir_leaves_no_workdir(tmp_path):
  c = tiny_config(tmp_path / "data", num_heads=3)  # d_model 32 does not split over 3 heads
  with pytest.raises(ValueError, match="num_heads"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_the_binary_reports_a_refused_rerun_in_one_line_and_keeps_the_result(tmp_path):
  data_dir, workdir = tmp_path / "data", tmp_path / "run"
  run_to_end(workdir, data_dir, "--config.total_steps=10", "--config.checkpoint_every=10")
  before = listing(workdir)
  refused = subprocess.run(train_command(workdir, data_dir, "--config.total_steps=10",
                                         "--config.learning_rate=0.01"),
                           cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
  assert refused.returncode == 1
  last = refused.stderr.strip().splitlines()[-1]
  assert "fields ['learning_rate'] differ" in last and "Traceback" not in refused.stderr
  assert listing(workdir) == before


def test_truncating_metrics_drops_later_steps_final_evals_and_cut_lines(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  with open(path, "w") as f:
    f.write('{"step": 5, "loss": 1.0}\n{"step": 10, "eval_loss": 2.0, "final": true}\n'
            '{"step": 10, "loss": 0.5}\n{"step": 15, "loss": 0.25}\n{"step": 2')
  train._truncate_metrics(path, 10)
  assert read_jsonl(path) == [{"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.5}]


def test_bad_model_fields_reach_the_trainer_validation(tmp_path):
  c = tiny_config(tmp_path / "data", attention="nope")
  with pytest.raises(ValueError, match="attention"):
    train.validate_config(c, num_devices=1)


# ---------------------------------------------------------------- subprocesses
# Kill-and-resume and multi-device runs go through the real binary.

TINY_FLAGS = [
    "--config.task_options.vocab_size=32", "--config.task_options.seq_len=24",
    "--config.task_options.num_kv_pairs=2", "--config.task_options.num_train=512",
    "--config.task_options.num_test=64", "--config.max_len=24", "--config.num_layers=1",
    "--config.d_model=32", "--config.num_heads=2", "--config.mlp_dim=64",
    "--config.batch_size=16", "--config.warmup_steps=5", "--config.learning_rate=0.003",
    "--config.log_every=5", "--config.eval_every=20",
]


def train_command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "experiments.train", "--config=configs/tasks/mqar.py:scale=cpu",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}",
          f"--jax_cache_dir={os.path.join(ROOT, 'tests', '.jax_cache')}", *TINY_FLAGS, *extra]


def run_env(devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def run_to_end(workdir, data_dir, *extra, devices=1):
  done = subprocess.run(train_command(workdir, data_dir, *extra), cwd=ROOT, env=run_env(devices),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.load(open(os.path.join(workdir, "result.json")))


def test_killed_run_resumes_to_the_same_bits(tmp_path):
  data_dir = tmp_path / "data"
  steps = ["--config.total_steps=60", "--config.checkpoint_every=10", "--config.dropout=0.1"]
  reference = run_to_end(tmp_path / "straight", data_dir, *steps)

  # Kill -9 twice: first as soon as the first save starts (its temporary
  # directory appears), then again later; each restart resumes.
  workdir = tmp_path / "killed"
  checkpoints = workdir / "checkpoints"
  kills = []
  during_a_save = lambda names: any("tmp" in n for n in names)
  after_step_20 = lambda names: "20" in names  # complete: renamed from its temporary name
  for ready in (during_a_save, after_step_20):
    proc = subprocess.Popen(train_command(workdir, data_dir, *steps), cwd=ROOT, env=run_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      names = os.listdir(checkpoints) if checkpoints.exists() else []
      if ready(names):
        break
      time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills.append(sorted(os.listdir(checkpoints)))
  assert not (workdir / "result.json").exists()

  assert "20" in kills[1], kills

  resumed = run_to_end(workdir, data_dir, *steps)
  assert resumed["status"] == "completed" and resumed["resumed_from_step"] >= 20
  assert resumed["final_eval"] == reference["final_eval"]  # to the last bit
  timing = ("steps_per_s", "tokens_per_s")
  logged = [{k: v for k, v in r.items() if k not in timing}
            for r in read_jsonl(workdir / "metrics.jsonl")]
  straight = [{k: v for k, v in r.items() if k not in timing}
              for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl")]
  assert logged == straight  # every step once, with the same numbers


def test_eight_devices_give_the_losses_of_one(tmp_path):
  data_dir = tmp_path / "data"
  steps = ["--config.total_steps=20", "--config.checkpoint_every=20"]
  one = run_to_end(tmp_path / "one", data_dir, *steps, devices=1)
  eight = run_to_end(tmp_path / "eight", data_dir, *steps, devices=8)
  assert (one["num_devices"], eight["num_devices"]) == (1, 8)
  losses = [[r["loss"] for r in read_jsonl(tmp_path / name / "metrics.jsonl") if "loss" in r]
            for name in ("one", "eight")]
  np.testing.assert_allclose(losses[0], losses[1], rtol=2e-5)
  np.testing.assert_allclose(one["final_eval"]["loss"], eight["final_eval"]["loss"], rtol=2e-5)


def test_profile_steps_writes_an_xprof_trace_of_those_steps(tmp_path):
  workdir, data_dir = tmp_path / "run", tmp_path / "data"
  result = run_to_end(workdir, data_dir, "--profile_steps=3,4", "--config.total_steps=6")
  assert result["status"] == "completed"
  traces = list((workdir / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0, traces
