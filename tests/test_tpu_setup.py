"""tpu_setup/: each script's gcloud calls, against a stub gcloud that records them.

The stub (written into tmp_path, first on PATH) appends each call's arguments
to a file as one JSON line and answers what the scripts ask: a TPU VM's state
(STUB_TPU_STATES, one per poll, the last repeating), a queued resource's
(STUB_QR_STATES), the number of workers (STUB_WORKERS); `ssh --worker=<i>`
fails for the workers in STUB_FAIL_WORKERS (with STUB_FAIL_CODE), and with
STUB_RUN_UNTIL_STOPPED an experiment runs until `run --stop`'s pkill (which, with
STUB_STOP_OUTLASTS_WORKERS, returns only once every worker has exited). Nothing here
reaches the network. The expected calls are written out in full: they are what
a user of these scripts would type by hand.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME, PROJECT, ZONE, BUCKET = "attn-test", "my-project", "us-west4-a", "my-bucket"
WHERE = [f"--project={PROJECT}", f"--zone={ZONE}"]
TPU = ["compute", "tpus", "tpu-vm"]
QR = ["compute", "tpus", "queued-resources"]
SWEEP = ["python", "-m", "experiments.sweep", "--config=configs/sweeps/positional.py:scale=cpu",
         f"--workdir=gs://{BUCKET}/runs/positional"]

STUB = r'''#!PYTHON
import json, os, sys, time
args = sys.argv[1:]
calls = os.environ["STUB_CALLS"]
with open(calls, "a") as f:
  f.write(json.dumps(args) + "\n")

def flag(name):
  return next((a.split("=", 1)[1] for a in args if a.startswith(name + "=")), None)

def next_state(var):  # one state a poll, the last repeating
  states = os.environ.get(var, "READY,ACTIVE").split(",")
  counter = f"{calls}.{var}"
  n = int(open(counter).read()) if os.path.exists(counter) else 0
  open(counter, "w").write(str(n + 1))
  return states[min(n, len(states) - 1)]

if args[:2] == ["storage", "cp"]:  # a sweep's tables/ arrives in the destination
  tables = os.path.join(args[-1], os.path.basename(args[-2]))
  os.makedirs(tables, exist_ok=True)
  with open(os.path.join(tables, "positional.md"), "w") as f:
    f.write("| pos | order |\n|---|---|\n| rope | 1.000 |\n")
elif args[3] == "describe":
  answers = {"value(networkEndpoints.len())": lambda: os.environ["STUB_WORKERS"],
             "value(state)": lambda: next_state("STUB_TPU_STATES"),
             "value(state.state)": lambda: next_state("STUB_QR_STATES")}
  print(answers[flag("--format")]())
elif args[3] == "ssh":
  worker, command = flag("--worker"), flag("--command")
  stopped = calls + ".stopped"
  if "pkill" in command:
    open(stopped, "w").close()
    exited = [f"{calls}.exited.{i}" for i in range(int(os.environ["STUB_WORKERS"]))]
    deadline = time.time() + 60
    while (os.environ.get("STUB_STOP_OUTLASTS_WORKERS") and time.time() < deadline and
           not all(map(os.path.exists, exited))):
      time.sleep(0.05)
  elif worker in os.environ.get("STUB_FAIL_WORKERS", "").split(","):
    print(f"ERROR: worker {worker} could not install jax[tpu]", file=sys.stderr)
    sys.exit(int(os.environ.get("STUB_FAIL_CODE", "1")))
  elif "exec" in command and os.environ.get("STUB_RUN_UNTIL_STOPPED"):
    deadline = time.time() + 120  # longer than any wait of the test's: only a stop ends it
    while not os.path.exists(stopped) and time.time() < deadline:
      time.sleep(0.05)
    print(f"worker {worker}: checkpointed, pre-empted")
    open(f"{calls}.exited.{worker}", "w").close()
    sys.exit(75)
  elif "jax.devices()" in command:
    print(f"{worker} [TpuDevice(id={worker})]")
  else:
    print(f"worker {worker}: done")
'''

INSTALL = ("set -e; rm -rf ~/attention_research; mkdir ~/attention_research; "
           "tar -xzf ~/attention_research.tar.gz -C ~/attention_research; cd ~/attention_research; "
           "[ -x ~/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | sh; "
           "~/.local/bin/uv venv --python 3.12 --seed .venv; "
           "~/.local/bin/uv pip install --python .venv/bin/python -c requirements.lock -e '.[gcs]' "
           '"jax[tpu]"')
CHECK = ("cd ~/attention_research && timeout 300 .venv/bin/python -c "
         '"import jax; print(jax.process_index(), jax.devices())"')
RUN = ("cd ~/attention_research && . .venv/bin/activate && exec python -m experiments.sweep "
       "--config=configs/sweeps/positional.py:scale=cpu "
       f"--workdir=gs://{BUCKET}/runs/positional --distributed")
STOP = 'pkill -TERM -f "[e]xperiments[./]" || true'


def describe(kind=TPU, fmt="value(state)"):
  return kind + ["describe", NAME] + WHERE + [f"--format={fmt}"]


COUNT = describe(fmt="value(networkEndpoints.len())")


def ssh(worker, command):
  return TPU + ["ssh", NAME] + WHERE + [f"--worker={worker}", f"--command={command}"]


def at_once(*calls):
  """Calls made at the same time (one a worker), so in any order."""
  return tuple(calls)


def assert_calls(calls, expected):
  """calls == expected, where an at_once() group may come in any order."""
  got, i = [], 0
  for item in expected:
    if isinstance(item, tuple):
      got.append(tuple(sorted(calls[i:i + len(item)])))
      i += len(item)
    else:
      got.append(calls[i] if i < len(calls) else None)
      i += 1
  got.extend(calls[i:])
  assert got == [tuple(sorted(e)) if isinstance(e, tuple) else e for e in expected]


AS_FROM_A_TERMINAL = ("import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); "
                      "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "os.execv(sys.argv[1], sys.argv[1:])")


class Tpu:
  """The scripts, the stub gcloud and one settings file, all in tmp_path."""

  def __init__(self, tmp_path, workers=2, **settings):
    self.dir = tmp_path
    self.logs = tmp_path / "logs" / NAME
    self.record = tmp_path / "state" / f"{NAME}.created"
    self.calls_file = tmp_path / "calls.jsonl"
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    (stub_dir / "gcloud").write_text(STUB.replace("PYTHON", sys.executable))
    (stub_dir / "gcloud").chmod(0o755)
    self.settings = tmp_path / "settings.env"
    self.write_settings(**settings)
    self.env = dict(os.environ, PATH=f"{stub_dir}{os.pathsep}{os.environ['PATH']}",
                    TPU_SETTINGS=str(self.settings), STUB_CALLS=str(self.calls_file),
                    STUB_WORKERS=str(workers))

  def write_settings(self, **settings):
    values = dict(PROJECT=PROJECT, ZONE=ZONE, ACCELERATOR_TYPE="v5litepod-16",
                  RUNTIME_VERSION="v2-alpha-tpuv5-lite", BUCKET=BUCKET, TPU_NAME=NAME,
                  POLL_SECONDS="0", LOG_DIR=str(self.dir / "logs"),
                  STATE_DIR=str(self.dir / "state"))
    values.update(settings)
    self.settings.write_text("".join(f"{k}={v}\n" for k, v in values.items() if v is not None))

  def start(self, script, *args, own_group=False, **env):
    """The script started as from a terminal: SIGINT neither blocked nor ignored (and with
    own_group, leading its own process group, as a terminal's foreground job does). A
    pytest worker's signal state is whatever earlier tests' libraries left (the Ctrl-C
    test failed in full fresh-clone runs only, its SIGINT never reaching the trap), and a
    child inherits an ignored or blocked signal, which bash then cannot trap."""
    self.calls_file.write_text("")
    # Through a small exec, not preexec_fn: a fork in this multithreaded (JAX) process
    # may deadlock. The pid stays the script's.
    return subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL,
                             os.path.join(REPO, "tpu_setup", script), *args], cwd=self.dir,
                            env=dict(self.env, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            process_group=0 if own_group else None)

  def run(self, script, *args, **env):
    """The finished script: returncode, stdout, stderr, and calls (the gcloud calls it made)."""
    process = self.start(script, *args, **env)
    stdout, stderr = process.communicate(timeout=60)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    result.calls = self.calls()
    return result

  def calls(self):
    return [json.loads(line) for line in self.calls_file.read_text().splitlines()]


def ok(result):
  assert result.returncode == 0, result.stderr
  return result


@pytest.mark.parametrize("accelerator, runtime, workers", [
    ("v5litepod-16", "v2-alpha-tpuv5-lite", 2),
    ("v4-8", "tpu-ubuntu2204-base", 1),
])
def test_create_install_run_results_delete(tmp_path, accelerator, runtime, workers):
  tpu = Tpu(tmp_path, workers, ACCELERATOR_TYPE=accelerator, RUNTIME_VERSION=runtime)
  everyone = range(workers)

  create = ok(tpu.run("create", STUB_TPU_STATES="CREATING,CREATING,READY"))
  assert_calls(create.calls, [
      TPU + ["create", NAME] + WHERE + [f"--accelerator-type={accelerator}",
                                        f"--version={runtime}"],
      describe(), describe(), describe(), COUNT])
  assert "kind=tpu-vm" in tpu.record.read_text()
  assert f"READY: {accelerator}, {workers} worker(s)" in create.stdout

  install = ok(tpu.run("install"))
  tarball = tmp_path / "logs" / NAME / "attention_research.tar.gz"
  assert_calls(install.calls, [
      COUNT,
      TPU + ["scp", str(tarball), f"{NAME}:"] + WHERE + ["--worker=all"],
      at_once(*[ssh(i, INSTALL) for i in everyone]),
      at_once(*[ssh(i, CHECK) for i in everyone])])
  assert tarball.stat().st_size > 0
  for i in everyone:
    assert f"worker {i}: {i} [TpuDevice(id={i})]" in install.stdout
    assert (tpu.logs / f"install-worker-{i}.log").exists()

  run = ok(tpu.run("run", "--", *SWEEP))
  assert_calls(run.calls, [COUNT, at_once(*[ssh(i, RUN) for i in everyone])])
  assert "worker 0: done" in run.stdout  # worker 0 is shown as it runs
  for i in everyone:
    assert f"worker {i}: done" in (tpu.logs / f"run-worker-{i}.log").read_text()

  results = ok(tpu.run("results", "runs/positional"))
  assert_calls(results.calls, [
      ["storage", "cp", "-r", f"gs://{BUCKET}/runs/positional/tables", "runs/positional/"]])
  assert "| rope | 1.000 |" in results.stdout
  assert (tmp_path / "runs" / "positional" / "tables" / "positional.md").exists()

  delete = ok(tpu.run("delete"))
  assert_calls(delete.calls, [TPU + ["delete", NAME] + WHERE + ["--quiet"]])
  assert not tpu.record.exists()


def test_create_queued_spot_waits_until_active_and_delete_removes_it(tmp_path):
  tpu = Tpu(tmp_path)
  waiting = "ACCEPTED,WAITING_FOR_RESOURCES,WAITING_FOR_RESOURCES,PROVISIONING,ACTIVE"
  create = ok(tpu.run("create", "--queued", "--spot", STUB_QR_STATES=waiting))
  assert_calls(create.calls, [
      QR + ["create", NAME] + WHERE + [f"--node-id={NAME}", "--accelerator-type=v5litepod-16",
                                       "--runtime-version=v2-alpha-tpuv5-lite", "--spot"],
      *[describe(QR, "value(state.state)")] * 5, COUNT])
  for state in ["ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"]:
    assert f"{NAME}: {state}" in create.stdout
  assert "kind=queued-resources" in tpu.record.read_text()

  again = ok(tpu.run("create", "--queued", "--spot", STUB_QR_STATES="ACTIVE"))  # no second one
  assert_calls(again.calls, [describe(QR, "value(state.state)"), COUNT])

  delete = ok(tpu.run("delete"))
  assert_calls(delete.calls, [
      QR + ["delete", NAME] + WHERE + ["--force", "--async", "--quiet"]])
  assert not tpu.record.exists()


def test_create_stops_at_a_failed_state_and_names_it(tmp_path):
  tpu = Tpu(tmp_path)
  create = tpu.run("create", "--queued", STUB_QR_STATES="ACCEPTED,FAILED")
  assert create.returncode == 1
  assert f"{NAME} is FAILED, not ACTIVE" in create.stderr
  assert len(create.calls) == 3  # create, two polls: no waiting on after FAILED
  assert tpu.record.exists()  # it exists on Google's side, so delete may remove it


@pytest.mark.parametrize("script, args, shown", [
    ("create", ["--queued", "--reserved"],
     ["+ gcloud compute tpus queued-resources create attn-test", "--reserved",
      "--format='value(state.state)'"]),
    ("install", [], ["+ git -C", "archive", "+ gcloud compute tpus tpu-vm scp",
                     "--worker=W --command='set -e;", "install-worker-W.log"]),
    ("install", ["--git_url=https://example.com/a.git"],
     ["--worker=all --command='rm -rf ~/attention_research && git clone --depth=1 "
      "https://example.com/a.git ~/attention_research'"]),
    ("run", ["--num_shards=2", "--shard_index=1", "--", *SWEEP],
     ["--distributed --num_shards=2 --shard_index=1'", "run-worker-W.log"]),
    ("results", ["runs/positional"],
     ["+ gcloud storage cp -r gs://my-bucket/runs/positional/tables runs/positional/"]),
    ("delete", [], ["+ gcloud compute tpus tpu-vm delete attn-test"]),
])
def test_dry_run_prints_the_commands_and_calls_nothing(tmp_path, script, args, shown):
  tpu = Tpu(tmp_path)
  if script == "delete":  # as create left it
    tpu.record.parent.mkdir()
    tpu.record.write_text("kind=tpu-vm\n")
  result = ok(tpu.run(script, "--dry_run", *args))
  assert result.calls == []
  for text in shown:
    assert text in result.stdout
  assert not (tmp_path / "logs").exists() and not (tmp_path / "runs").exists()
  assert tpu.record.exists() == (script == "delete")  # neither written nor removed


def test_install_names_the_worker_that_failed(tmp_path):
  tpu = Tpu(tmp_path, workers=2)
  install = tpu.run("install", STUB_FAIL_WORKERS="1")
  assert install.returncode == 1
  log = tpu.logs / "install-worker-1.log"
  assert f"install failed on worker 1 of 2 (exit 1): see {log}" in install.stderr
  assert "install failed on 1 of 2 worker(s)" in install.stderr
  assert "ERROR: worker 1 could not install jax[tpu]" in log.read_text()
  assert_calls(install.calls, [  # no check after a failed install
      COUNT, TPU + ["scp", str(tpu.logs / "attention_research.tar.gz"), f"{NAME}:"] + WHERE
      + ["--worker=all"], at_once(ssh(0, INSTALL), ssh(1, INSTALL))])


@pytest.mark.parametrize("script", ["create", "install", "run", "results", "delete"])
def test_a_missing_setting_is_named(tmp_path, script):
  tpu = Tpu(tmp_path, ZONE=None, BUCKET=None)
  # Only the file counts, not a ZONE the shell happens to have.
  args = ["runs/positional"] if script == "results" else []
  result = tpu.run(script, *args, ZONE="us-central1-a")
  assert result.returncode == 2
  assert result.stderr == f"error: {tpu.settings}: missing setting(s): ZONE BUCKET (see " \
                          "tpu_setup/settings.example)\n"
  assert result.calls == []


def test_a_missing_settings_file_is_named(tmp_path):
  tpu = Tpu(tmp_path)
  result = tpu.run("create", "--settings", str(tmp_path / "nowhere.env"))
  assert result.returncode == 2
  assert f"no settings file {tmp_path / 'nowhere.env'}" in result.stderr


def test_delete_refuses_a_tpu_it_did_not_create_unless_forced(tmp_path):
  tpu = Tpu(tmp_path)
  refused = tpu.run("delete")
  assert refused.returncode == 2
  assert refused.stderr == (f"error: tpu_setup/create did not create {NAME} (no {tpu.record}): "
                            "--force deletes it anyway\n")
  assert refused.calls == []
  forced = ok(tpu.run("delete", "--force"))
  assert_calls(forced.calls, [TPU + ["delete", NAME] + WHERE + ["--quiet"]])
  queued = ok(tpu.run("delete", "--force", "--queued"))
  assert_calls(queued.calls, [QR + ["delete", NAME] + WHERE + ["--force", "--async", "--quiet"]])


def test_run_refuses_a_local_workdir_on_two_workers(tmp_path):
  tpu = Tpu(tmp_path, workers=2)
  local = [*SWEEP[:-1], "--workdir=runs/positional"]
  refused = tpu.run("run", "--", *local)
  assert refused.returncode == 2
  assert "--workdir=runs/positional: the command needs a --workdir on gs://" in refused.stderr
  assert "attn-test has 2 workers" in refused.stderr
  assert_calls(refused.calls, [COUNT])
  one_host = ok(tpu.run("run", "--", *local, STUB_WORKERS="1"))  # one host: its own disk will do
  assert_calls(one_host.calls, [COUNT, ssh(0, RUN.replace(f"gs://{BUCKET}/", ""))])


def test_run_passes_the_shard_and_reports_preemption(tmp_path):
  tpu = Tpu(tmp_path, workers=2)
  sharded = RUN + " --num_shards=3 --shard_index=2"
  result = tpu.run("run", "--num_shards", "3", "--shard_index=2", "--", *SWEEP,
                   STUB_FAIL_WORKERS="0,1", STUB_FAIL_CODE="75")
  assert result.returncode == 75
  assert_calls(result.calls, [COUNT, at_once(ssh(0, sharded), ssh(1, sharded))])
  assert f"run failed on worker 1 of 2 (exit 75): see {tpu.logs / 'run-worker-1.log'}" \
      in result.stderr
  assert "pre-empted on 2 of 2 worker(s): the same command resumes" in result.stderr
  bad = tpu.run("run", "--num_shards=2", "--", *SWEEP)
  assert bad.returncode == 2 and "both are needed" in bad.stderr


def test_run_stop_sends_sigterm_to_every_worker(tmp_path):
  stop = ok(Tpu(tmp_path).run("run", "--stop"))
  assert_calls(stop.calls, [TPU + ["ssh", NAME] + WHERE + ["--worker=all", f"--command={STOP}"]])


# The workers may end while the Ctrl-C trap still runs (its stop still connected):
# their 75 must come back then too, not the 130 of the wait the trap cut short (CI
# saw that once). A terminal's Ctrl-C goes to the whole process group, the ssh
# clients and worker 0's tee included: they must outlive it.
@pytest.mark.parametrize("stop_outlasts_workers, whole_group", [("", False), ("1", False),
                                                                ("", True)],
                         ids=["stop_returns_first", "workers_end_while_the_trap_runs",
                              "from_a_terminal_to_the_whole_group"])
def test_ctrl_c_stops_the_run_on_every_worker_and_waits_for_it(tmp_path, stop_outlasts_workers,
                                                               whole_group):
  tpu = Tpu(tmp_path, workers=2)
  running = tpu.start("run", "--", *SWEEP, STUB_RUN_UNTIL_STOPPED="1",
                      STUB_STOP_OUTLASTS_WORKERS=stop_outlasts_workers, own_group=whole_group)
  # Both workers' experiments started (a loaded CI machine may take seconds), and the
  # script still running, before the Ctrl-C.
  deadline = time.time() + 60
  while tpu.calls_file.read_text().count('"ssh"') < 2 and time.time() < deadline:
    time.sleep(0.05)
  assert tpu.calls_file.read_text().count('"ssh"') == 2 and running.poll() is None
  with open(f"/proc/{running.pid}/status") as f:  # for the message, should this fail
    state = [line.strip() for line in f if line.startswith(("SigBlk", "SigIgn"))]
  if whole_group:
    os.killpg(running.pid, signal.SIGINT)
  else:
    running.send_signal(signal.SIGINT)
  stdout, stderr = running.communicate(timeout=150)
  assert running.returncode == 75, stderr  # the workers checkpointed and exited 75
  assert "worker 0: checkpointed, pre-empted" in stdout  # worker 0's last line, through tee
  assert "stopping the experiment on every worker" in stderr, (state, stderr)
  assert_calls(tpu.calls(), [
      COUNT, at_once(ssh(0, RUN), ssh(1, RUN)),
      TPU + ["ssh", NAME] + WHERE + ["--worker=all", f"--command={STOP}"]])
