"""Pre-emption: SIGTERM and SIGINT checkpoint the current step, on one process or two; the
rerun loses nothing and ends equal to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from attention_research import preemption
from attention_research import train
from tests.test_train import ROOT
from tests.test_train import read_jsonl
from tests.test_train import run_env
from tests.test_train import run_to_end
from tests.test_train import tiny_config
from tests.test_train import train_command
from tests.test_sweep import distributed
from tests.test_sweep import driver_env
from tests.test_sweep import run_together
from tests.test_sweep import tiny_trials

TIMING = ("steps_per_s", "tokens_per_s")


def settings(data_dir):
  # Logs every 5 steps, evaluates at 20, checkpoints at 30 and 40.
  return tiny_config(data_dir, total_steps=40, checkpoint_every=30, dropout=0.1)


def without_timing(path):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(path)]


class SignalsAt:
  """The trainer's data iterator, sending this process `signums` as step `at`'s batch is read:
  a real signal at a known step."""

  def __init__(self, iterator, at, signums):
    self.iterator, self.at, self.signums, self.reads = iterator, at, signums, 0

  def __next__(self):
    self.reads += 1
    if self.reads == self.at:
      for signum in self.signums:
        os.kill(os.getpid(), signum)
    return next(self.iterator)

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state):
    self.iterator.set_state(state)


def signal_at(monkeypatch, at, *signums):
  make = train.data.train_iterator
  monkeypatch.setattr(train.data, "train_iterator",
                      lambda *a, **k: SignalsAt(make(*a, **k), at, signums))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  root = tmp_path_factory.mktemp("straight")
  result = train.train_and_evaluate(settings(root / "data"), str(root / "run"))
  assert result["status"] == "completed"
  return root, str(root / "run"), result


# Step 22 is mid-window (logs at 20 and 25) and between checkpoints: steps 21
# and 22 are in no log and no checkpoint but the pre-emption's. Step 40 is the last.
@pytest.mark.parametrize("signum, at", [(signal.SIGTERM, 22), (signal.SIGINT, 22),
                                        (signal.SIGTERM, 40)],
                         ids=["SIGTERM-mid-window", "SIGINT-mid-window", "SIGTERM-last-step"])
def test_a_signal_checkpoints_its_step_and_the_rerun_equals_an_uninterrupted_run(
    straight, tmp_path, monkeypatch, signum, at):
  root, straight_dir, reference = straight
  workdir = str(tmp_path / "run")
  handlers = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
  with monkeypatch.context() as patch:
    signal_at(patch, at, signum)
    stopped = train.train_and_evaluate(settings(root / "data"), workdir)
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
  assert stopped["status"] == "preempted" and stopped["step"] == at
  assert stopped["final_eval"] is None and "rerun" in stopped["error"]
  assert json.load(open(os.path.join(workdir, "result.json")))["status"] == "preempted"
  saved = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")))
  assert saved == ([30, 40] if at == 40 else [at])

  resumed = train.train_and_evaluate(settings(root / "data"), workdir)
  assert resumed["status"] == "completed" and resumed["resumed_from_step"] == at
  assert resumed["final_eval"] == reference["final_eval"]  # to the last bit
  # Every step logged once, with the numbers of the uninterrupted run: the
  # window cut by the signal (steps 21 and 22) was carried in the checkpoint.
  assert without_timing(os.path.join(workdir, "metrics.jsonl")) == without_timing(
      os.path.join(straight_dir, "metrics.jsonl"))
  assert resumed["train_steps_per_s"] > 0 and resumed["train_tokens_per_s"] > 0


def test_a_signal_while_preparing_stops_before_the_first_step(straight, tmp_path, monkeypatch):
  root, _, reference = straight
  workdir = str(tmp_path / "run")
  prepare = train.data.prepare

  def prepare_then_signal(*args, **kwargs):
    built = prepare(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)  # while the run is still setting up
    return built

  with monkeypatch.context() as patch:
    patch.setattr(train.data, "prepare", prepare_then_signal)
    stopped = train.train_and_evaluate(settings(root / "data"), workdir)
  assert stopped["status"] == "preempted" and stopped["step"] == 0
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "1"))
  resumed = train.train_and_evaluate(settings(root / "data"), workdir)
  assert resumed["final_eval"] == reference["final_eval"]


def test_a_second_sigint_stops_at_once_without_a_checkpoint(straight, tmp_path, monkeypatch):
  root, _, _ = straight
  workdir = str(tmp_path / "run")
  signal_at(monkeypatch, 22, signal.SIGINT, signal.SIGINT)
  with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
    train.train_and_evaluate(settings(root / "data"), workdir)
  assert not os.path.exists(os.path.join(workdir, "result.json"))
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "22"))


def test_the_binary_exits_75_on_sigterm_and_its_rerun_finishes_equal(tmp_path):
  data_dir = tmp_path / "data"
  steps = ["--config.total_steps=300", "--config.checkpoint_every=100", "--config.dropout=0.1",
           "--config.eval_every=100"]
  reference = run_to_end(tmp_path / "straight", data_dir, *steps)
  workdir = tmp_path / "preempted"
  proc = subprocess.Popen(train_command(workdir, data_dir, *steps), cwd=ROOT, env=run_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(workdir / "checkpoints" / "100"):  # training, past its first checkpoint
      break
    time.sleep(0.005)
  assert proc.poll() is None, "the run ended before the signal"
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == preemption.EXIT_CODE, stderr[-2000:]
  result = json.load(open(workdir / "result.json"))
  assert result["status"] == "preempted" and 100 < result["step"] < 300
  # Nothing lost: the step the signal interrupted is the newest checkpoint.
  steps_saved = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  assert steps_saved[-1] == result["step"]
  resumed = run_to_end(workdir, data_dir, *steps)
  assert resumed["resumed_from_step"] == result["step"]
  assert resumed["final_eval"] == reference["final_eval"]


TWO_PROCESS_FLAGS = ("--train=real", "--trials=1", "--total_steps=100")


@pytest.fixture(scope="module")
def two_process_straight(tmp_path_factory):
  root = tmp_path_factory.mktemp("two")
  straight = str(root / "straight")
  outcomes = run_together(distributed([straight, straight], root, *TWO_PROCESS_FLAGS))
  assert [rc for rc, _, _ in outcomes] == [0, 0], [err[-3000:] for _, _, err in outcomes]
  tid = tiny_trials(root / "data")[0][1]
  return root, tid, json.load(open(os.path.join(straight, "trials", tid, "result.json")))


# SIGTERM to one of two processes is also tests/test_sharding.py's two-host test (under fsdp
# and context); here SIGINT, which the processes agree on at log steps instead.
@pytest.mark.parametrize("signum", [signal.SIGINT], ids=["SIGINT"])
def test_a_signal_to_one_process_of_two_checkpoints_one_step_on_both(two_process_straight,
                                                                     signum):
  """A pod slice's maintenance event may reach one host first, Ctrl-C only one terminal's:
  SIGTERM through JAX's pre-emption service, SIGINT at the next log step, every process
  saves the same step."""
  root, tid, reference = two_process_straight
  workdir = str(root / signal.Signals(signum).name)
  procs = [subprocess.Popen(c, cwd=ROOT, env=driver_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for c in distributed([workdir, workdir], root, *TWO_PROCESS_FLAGS)]
  first = os.path.join(workdir, "trials", tid, "checkpoints", "20")
  deadline = time.time() + 240
  while time.time() < deadline and not os.path.exists(first) and procs[1].poll() is None:
    time.sleep(0.005)
  procs[1].send_signal(signum)
  outputs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outputs]
  assert [json.loads(out.splitlines()[-1]) for out, _ in outputs] == [{tid: "preempted"}] * 2
  stopped = json.load(open(os.path.join(workdir, "trials", tid, "result.json")))
  assert stopped["status"] == "preempted" and 20 < stopped["step"] < 100
  saved = sorted(int(n) for n in os.listdir(os.path.dirname(first)) if n.isdigit())
  assert saved[-1] == stopped["step"]

  outcomes = run_together(distributed([workdir, workdir], root, *TWO_PROCESS_FLAGS))
  assert [rc for rc, _, _ in outcomes] == [0, 0], [err[-3000:] for _, _, err in outcomes]
  resumed = json.load(open(os.path.join(workdir, "trials", tid, "result.json")))
  assert resumed["resumed_from_step"] == stopped["step"]
  assert resumed["final_eval"] == reference["final_eval"]  # to the last bit


def test_the_sweep_binary_exits_75_on_sigterm_with_its_trial_preempted(tmp_path):
  workdir = tmp_path / "sweep"
  command = [sys.executable, "-m", "experiments.sweep", "--config=tests/fixtures/tiny_sweep.py",
             f"--workdir={workdir}", f"--config.data_dir={tmp_path / 'data'}",
             "--config.total_steps=300", "--config.checkpoint_every=10",
             f"--jax_cache_dir={os.path.join(ROOT, 'tests', '.jax_cache')}"]
  proc = subprocess.Popen(command, cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if list((workdir / "trials").glob("*/checkpoints/10")):
      break
    time.sleep(0.005)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == preemption.EXIT_CODE, stderr[-2000:]
  assert "sweep preempted" in stderr
  listing = subprocess.run(command + ["--dry_run"], cwd=ROOT, env=run_env(),
                           capture_output=True, text=True, timeout=120)
  statuses = [line.split()[4] for line in listing.stdout.splitlines()]
  assert statuses == ["preempted"] + ["pending"] * (len(statuses) - 1), listing.stdout
