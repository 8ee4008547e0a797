"""The mesh from the config, the sharding rules, and training over data, fsdp and tensor axes
on 8 simulated devices, equal to one device; checkpoints that move between meshes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from attention_research import preemption
from attention_research import sharding
from attention_research import train
from tests.test_sweep import free_port
from tests.test_train import ROOT
from tests.test_train import read_jsonl
from tests.test_train import run_env
from tests.test_train import run_to_end
from tests.test_train import tiny_config
from tests.test_train import train_command


@pytest.mark.parametrize("mesh, devices, expected", [
    (dict(data=-1, fsdp=1, tensor=1, context=1), 8, dict(data=8, fsdp=1, tensor=1, context=1)),
    (dict(data=2, fsdp=-1, tensor=2), 8, dict(data=2, fsdp=2, tensor=2, context=1)),
    (dict(fsdp=8, data=1), 8, dict(data=1, fsdp=8, tensor=1, context=1)),
])
def test_the_mesh_takes_its_sizes_from_the_config(mesh, devices, expected):
  assert sharding.mesh_shape(mesh, devices) == expected


@pytest.mark.parametrize("mesh, devices, message", [
    (dict(data=2, model=4), 8, r"config.mesh: unknown axes \['model'\]; allowed: \['data', "),
    (dict(data=-1, fsdp=-1), 8, r"2 axes are -1 \(\['data', 'fsdp'\]\)"),
    (dict(data=3, fsdp=1), 8, r"data 3 x fsdp 1 x tensor 1 x context 1 is 3 devices, but "
                              r"there are 8"),
    (dict(data=-1, tensor=3), 8, r"take 3 devices, which does not divide the 8 devices"),
    (dict(data=0), 8, r"config.mesh.data=0: a mesh axis size is a positive integer or -1"),
])
def test_bad_meshes_are_named(mesh, devices, message):
  with pytest.raises(ValueError, match=message):
    sharding.mesh_shape(mesh, devices)


@pytest.mark.parametrize("field, value, mesh, message", [
    ("batch_size", 12, dict(data=2, fsdp=4), r"batch_size=12 must be divisible by mesh data x "
                                             r"fsdp = 2 x 4 = 8"),
    ("num_heads", 2, dict(data=2, tensor=4), r"mesh.tensor=4 must divide config.num_heads=2"),
    ("max_len", 28, dict(data=1, context=8), r"mesh.context=8 must divide config.max_len=28"),
    ("attention", "strided", dict(data=4, context=2), r"config.context_parallel='ring': "
                                                      r"attention 'strided' has no such "
                                                      r"context-parallel strategy; allowed with "
                                                      r"mesh.context=2: \['all_gather'\]"),
    ("context_parallel", "zigzag", dict(data=-1), r"config.context_parallel: unknown strategy "
                                                  r"'zigzag'; allowed: \['ring', 'all_gather'\]"),
])
def test_a_mesh_axis_that_does_not_divide_what_it_splits_is_refused(tmp_path, field, value,
                                                                     mesh, message):
  c = tiny_config(tmp_path / "data")
  c[field] = value
  c.mesh = dict(dict(data=1, fsdp=1, tensor=1, context=1), **mesh)
  with pytest.raises(ValueError, match=message):
    train.validate_config(c, num_devices=8)


def fake_mesh(**sizes):
  """What spec() reads of a mesh: its axis sizes."""
  return types.SimpleNamespace(shape=dict(dict(data=1, fsdp=1, tensor=1, context=1), **sizes))


def test_rules_split_what_their_axis_divides_and_keep_the_rest_whole():
  P = sharding.jax.sharding.PartitionSpec
  mesh = fake_mesh(data=2, fsdp=4, tensor=2)
  spec = lambda name, shape: sharding.spec(sharding.logical_axes(name, len(shape)), shape, mesh)
  assert spec("params/encoder/block_0/attention/query/kernel", (32, 4, 8)) == P(
      "fsdp", "tensor", None)
  assert spec("params/encoder/block_0/attention/out/kernel", (4, 8, 32)) == P(
      "tensor", None, "fsdp")
  assert spec("params/encoder/block_0/mlp_in/kernel", (32, 64)) == P("fsdp", "tensor")
  assert spec("params/encoder/block_0/mlp_out/bias", (32,)) == P("fsdp")
  # Grouped-query attention with one kv head under tensor 2: every device holds it.
  assert spec("params/encoder/block_0/attention/key/kernel", (32, 1, 8)) == P("fsdp", None, None)
  # A width fsdp does not divide stays whole; the optimizer's moments follow their parameter.
  assert spec("params/encoder/embed/embedding", (33, 30)) == P(None, None)
  assert spec("opt_state/1/0/mu/encoder/block_0/mlp_in/kernel", (32, 64)) == P("fsdp", "tensor")
  with pytest.raises(ValueError, match="no rule in PARAM_AXES for the parameter 'params/new/w'"):
    sharding.logical_axes("params/new/w", 2)


def test_out_of_memory_is_refused_before_the_first_step(tmp_path, monkeypatch):
  monkeypatch.setattr(sharding, "device_memory_bytes", lambda device: 1000)
  with pytest.raises(MemoryError, match=r"the train step needs .* GiB per device .* but a cpu "
                                        r"device has 9.31e-07 GiB, on the mesh data 1 x fsdp 1"
                                        r" x tensor 1 x context 1; .*mesh.fsdp"):
    train.train_and_evaluate(tiny_config(tmp_path / "data"), str(tmp_path / "run"))
  metrics = tmp_path / "run" / "metrics.jsonl"
  assert not metrics.exists() or read_jsonl(metrics) == []  # not one step
  assert json.load(open(tmp_path / "run" / "result.json"))["status"] == "failed"


# ------------------------------------------------- 8 simulated devices

MESHES = {
    "data2-fsdp2-tensor2": ["--config.mesh.data=2", "--config.mesh.fsdp=2",
                            "--config.mesh.tensor=2"],
    "fsdp8": ["--config.mesh.data=1", "--config.mesh.fsdp=8"],
    "data2-context4-ring": ["--config.mesh.data=2", "--config.mesh.context=4",
                            "--config.context_parallel=ring"],
    "context8-all_gather": ["--config.mesh.data=1", "--config.mesh.context=8",
                            "--config.context_parallel=all_gather"],
}


def losses(workdir):
  return [r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  root = tmp_path_factory.mktemp("one")
  result = run_to_end(root / "run", root / "data", "--config.total_steps=30",
                      "--config.checkpoint_every=10", "--config.keep_checkpoints=5")
  return root, result


@pytest.mark.devices8
@pytest.mark.parametrize("layout", sorted(MESHES))
def test_training_over_a_mesh_follows_one_device(one_device, tmp_path, layout):
  root, reference = one_device
  result = run_to_end(tmp_path / "run", root / "data", "--config.total_steps=30",
                      "--config.checkpoint_every=30", *MESHES[layout], devices=8)
  assert result["num_devices"] == 8
  # Float32 sums reassociate over shards (matmuls split over fsdp and tensor
  # add partial products in another order): equal to rounding, compounded by
  # 30 Adam steps.
  np.testing.assert_allclose(losses(tmp_path / "run"), losses(root / "run"), rtol=2e-5)
  np.testing.assert_allclose(result["final_eval"]["loss"], reference["final_eval"]["loss"],
                             rtol=2e-5)
  # The state is split: fsdp 8 holds about an eighth of it (the q/k/v biases
  # have no embed axis and stay whole); fsdp 2 x tensor 2 splits the heads and
  # MLP four ways, the embeddings and norms (no tensor rule) two ways.
  # Data and context parallelism keep the whole state on every device.
  ratio = reference["state_bytes_per_device"] / result["state_bytes_per_device"]
  assert ratio > {"fsdp8": 7.0, "data2-fsdp2-tensor2": 3.0}.get(layout, 0.99), ratio


@pytest.mark.devices8
def test_a_checkpoint_resumes_on_another_mesh_and_device_count(one_device, tmp_path):
  root, reference = one_device
  first = tmp_path / "fsdp4-tensor2"
  run_to_end(first, root / "data", "--config.total_steps=30", "--config.checkpoint_every=10",
             "--config.keep_checkpoints=5", "--config.mesh.data=1", "--config.mesh.fsdp=4",
             "--config.mesh.tensor=2", devices=8)
  # As if its slice were reclaimed after step 10: only that checkpoint is left.
  for name in ("20", "30"):
    shutil.rmtree(first / "checkpoints" / name)
  os.remove(first / "result.json")
  second = tmp_path / "moved"
  shutil.copytree(first, second)
  onto_four = run_to_end(second, root / "data", "--config.total_steps=30",
                         "--config.checkpoint_every=10", "--config.keep_checkpoints=5",
                         "--config.mesh.data=2", "--config.mesh.tensor=2", devices=4)
  onto_one = run_to_end(first, root / "data", "--config.total_steps=30",
                        "--config.checkpoint_every=10", "--config.keep_checkpoints=5", devices=1)
  for resumed, workdir in ((onto_four, second), (onto_one, first)):
    assert resumed["resumed_from_step"] == 10  # verified, not moved aside as corrupt
    assert not os.path.exists(workdir / "checkpoints" / "corrupt")
    np.testing.assert_allclose(losses(workdir), losses(root / "run"), rtol=2e-5)
    np.testing.assert_allclose(resumed["final_eval"]["loss"], reference["final_eval"]["loss"],
                               rtol=2e-5)
  assert json.load(open(second / "result.json"))["mesh"] == dict(data=2, fsdp=1, tensor=2,
                                                                 context=1)


# ------------------------------------- two processes of 4 simulated devices

def start_two(workdir, data_dir, *extra):
  """Both processes of a jax.distributed run of the train binary on localhost."""
  port = free_port()
  return [subprocess.Popen(
      train_command(workdir, data_dir, "--distributed", f"--coordinator_address=localhost:{port}",
                    "--num_processes=2", f"--process_id={i}", *extra),
      cwd=ROOT, env=run_env(devices=4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def finish(procs, timeout=300):
  outputs = [p.communicate(timeout=timeout) for p in procs]
  return [p.returncode for p in procs], [err[-3000:] for _, err in outputs]


LONG = ["--config.total_steps=60", "--config.checkpoint_every=20", "--config.keep_checkpoints=10"]
# fsdp crosses the two processes (each holds half the state: the digests add up over
# processes); ring attention runs over the context pairs within each.
TWO_HOST_MESH = ["--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.mesh.context=2",
                 "--config.context_parallel=ring"]


@pytest.mark.processes2
def test_two_processes_train_as_one_and_a_sigterm_to_one_stops_both_at_one_step(tmp_path):
  """A pod slice: two hosts of four devices train the losses of one device, write one
  result, and a maintenance event reaching one host checkpoints the same step on both,
  from which the rerun finishes equal."""
  data_dir = tmp_path / "data"
  reference = run_to_end(tmp_path / "one", data_dir, *LONG)
  workdir = tmp_path / "two"
  procs = start_two(workdir, data_dir, *LONG, *TWO_HOST_MESH)
  first = workdir / "checkpoints" / "20"
  deadline = time.time() + 240
  while time.time() < deadline and not first.exists() and procs[1].poll() is None:
    time.sleep(0.005)
  procs[1].send_signal(signal.SIGTERM)
  codes, errors = finish(procs)
  assert codes == [preemption.EXIT_CODE] * 2, errors
  stopped = json.load(open(workdir / "result.json"))
  assert stopped["status"] == "preempted" and 20 < stopped["step"] < 60, stopped
  saved = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  assert saved[-1] == stopped["step"]

  codes, errors = finish(start_two(workdir, data_dir, *LONG, *TWO_HOST_MESH))
  assert codes == [0, 0], errors
  resumed = json.load(open(workdir / "result.json"))
  assert resumed["resumed_from_step"] == stopped["step"]  # its digests verified
  assert resumed["num_devices"] == 8 and resumed["mesh"] == dict(data=1, fsdp=4, tensor=1,
                                                                 context=2)
  # Float32 reassociation over shards, as above, over 60 steps.
  np.testing.assert_allclose(losses(workdir), losses(tmp_path / "one"), rtol=5e-5)
  np.testing.assert_allclose(resumed["final_eval"]["loss"], reference["final_eval"]["loss"],
                             rtol=5e-5)


def sweep_command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "experiments.sweep", "--config=tests/fixtures/tiny_sweep.py",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}", "--num_shards=4",
          "--shard_index=0", f"--jax_cache_dir={os.path.join(ROOT, 'tests', '.jax_cache')}",
          *extra]


@pytest.mark.processes2
def test_a_distributed_sweep_runs_its_trial_over_both_processes_mesh(tmp_path):
  data_dir = tmp_path / "data"
  one = subprocess.run(sweep_command(tmp_path / "one", data_dir), cwd=ROOT, env=run_env(),
                       capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]
  port = free_port()
  procs = [subprocess.Popen(
      sweep_command(tmp_path / "two", data_dir, "--distributed",
                    f"--coordinator_address=localhost:{port}", "--num_processes=2",
                    f"--process_id={i}", "--config.mesh.data=2", "--config.mesh.fsdp=4"),
      cwd=ROOT, env=run_env(devices=4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  codes, errors = finish(procs)
  assert codes == [0, 0], errors
  (trial,) = os.listdir(tmp_path / "one" / "trials")
  assert os.listdir(tmp_path / "two" / "trials") == [trial]  # one trial, run once by both
  want = json.load(open(tmp_path / "one" / "trials" / trial / "result.json"))
  got = json.load(open(tmp_path / "two" / "trials" / trial / "result.json"))
  assert got["status"] == "completed" and got["num_devices"] == 8
  assert got["mesh"] == dict(data=2, fsdp=4, tensor=1, context=1)
  np.testing.assert_allclose(losses(tmp_path / "two" / "trials" / trial),
                             losses(tmp_path / "one" / "trials" / trial), rtol=2e-5)
  np.testing.assert_allclose(got["final_eval"]["loss"], want["final_eval"]["loss"], rtol=2e-5)


def test_what_only_the_split_attention_knows_is_refused_at_validation(tmp_path):
  """Shards of whole blocks: refused before a workdir is written, naming the lengths."""
  c = tiny_config(tmp_path / "data")
  c.attention, c.attention_options = "bigbird", dict(block_size=8)
  c.mesh = dict(data=1, fsdp=1, tensor=1, context=4)
  c.context_parallel = "all_gather"
  with pytest.raises(ValueError, match=r"config.mesh.context=4: bigbird under context "
                                       r"parallelism: each shard's 6 rows must be a multiple "
                                       r"of block_size=8"):
    train.validate_config(c, num_devices=4)
  c.attention_options = dict(block_size=6)  # 24 tokens: 6 a shard, one block each
  train.validate_config(c, num_devices=4)
