"""The path layer and the claims, on a local directory and on gs:// (a fake store in-process),
and a sweep end to end with a gs:// workdir."""

import logging
import os
import subprocess
import sys
import threading
import time
import types
from unittest import mock
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from attention_research import checkpoints
from attention_research import claims
from attention_research import data
from attention_research import storage
from tests import fake_gcs
from tests.fixtures import tiny_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "fake-bucket"


@pytest.fixture(scope="module")
def gcs():
  server = fake_gcs.start()
  with mock.patch.dict(os.environ, server.env):
    yield server
  server.stop()


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
  """A fresh directory: under tmp_path, or a fresh prefix on the fake store."""
  if request.param == "local":
    return str(tmp_path)
  request.getfixturevalue("gcs")
  return f"gs://{BUCKET}/{uuid.uuid4().hex[:8]}"


def test_whole_writes_appends_listings_and_moves(root):
  base = storage.path(root)
  assert storage.is_local(root) == (not root.startswith("gs://"))
  with pytest.raises(FileNotFoundError):
    storage.read_json(base / "none.json")
  assert storage.listdir(base / "none") == []
  (base / "d").mkdir(parents=True, exist_ok=True)
  storage.write_json(base / "d" / "r.json", {"a": 1})
  storage.write_json(base / "d" / "r.json", {"a": 2})  # replaced whole
  assert storage.read_json(base / "d" / "r.json") == {"a": 2}
  assert storage.listdir(base / "d") == ["r.json"]  # no temporary file left
  log = storage.open_append(base / "d" / "m.jsonl")
  log.write("1\n")
  log.flush()
  assert (base / "d" / "m.jsonl").read_text() == "1\n"  # readable at each flush
  log.write("2\n")
  log.close()
  again = storage.open_append(base / "d" / "m.jsonl")  # a resumed run goes on appending
  again.write("3\n")
  again.close()
  assert (base / "d" / "m.jsonl").read_text() == "1\n2\n3\n"
  (base / "e").mkdir(parents=True, exist_ok=True)
  storage.move(os.path.join(root, "d"), os.path.join(root, "e", "d"))  # a directory
  assert storage.listdir(base / "d") == []
  assert sorted(storage.listdir(base / "e" / "d")) == ["m.jsonl", "r.json"]
  assert storage.absolute(root) == (os.path.abspath(root) if storage.is_local(root) else root)


def test_create_if_absent_has_one_winner_and_changes_need_the_version_read(root):
  target = storage.path(root) / "c" / "claim.json"
  target.parent.mkdir(parents=True, exist_ok=True)
  versions = [None] * 8

  def create(i):
    versions[i] = storage.create(target, f"creator {i}".encode())

  threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  winners = [i for i, v in enumerate(versions) if v is not None]
  assert len(winners) == 1
  data, _, version = storage.read_versioned(target)
  assert data == f"creator {winners[0]}".encode() and version == versions[winners[0]]
  refreshed = storage.refresh_if(target, version)
  assert refreshed is not None
  if not storage.is_local(root):  # a refresh is a new generation; the old one is stale
    assert refreshed != version and storage.refresh_if(target, version) is None
    assert not storage.remove_if(target, version)
  storage.write_text(target, "replaced by another process")
  assert storage.refresh_if(target, refreshed) is None
  assert not storage.remove_if(target, refreshed) and target.exists()
  assert storage.remove_if(target, storage.read_versioned(target)[2])
  assert not target.exists() and storage.read_versioned(target) is None
  assert storage.create(target, b"again") is not None


def test_other_url_schemes_are_refused_for_conditional_writes():
  with pytest.raises(ValueError, match="s3://"):
    storage.create("s3://bucket/claim.json", b"")


def test_claims_are_held_taken_over_when_stale_and_their_loss_noticed(root, monkeypatch, caplog):
  path = os.path.join(root, "t", "claim.json")
  with claims.held(path, 60) as token:
    assert token is not None and claims.acquire(path, 60) is None
    assert claims.holder(path, 60)["token"] == token
  assert claims.holder(path, 60) is None and storage.read_versioned(path) is None

  # Another machine's claim: live while its heartbeat is recent, stale after timeout_s.
  storage.write_json(path, {"host": "another-host", "pid": 1, "token": "theirs"})
  assert claims.acquire(path, 60) is None
  later = time.time() + 100
  monkeypatch.setattr(claims, "time", types.SimpleNamespace(time=lambda: later))
  caplog.set_level(logging.WARNING)
  token = claims.acquire(path, 60)
  assert token is not None and storage.read_json(path)["token"] == token
  assert any("took over the stale claim" in r.getMessage() for r in caplog.records)
  claims._release(path, token)
  monkeypatch.undo()

  # A heartbeat that finds its claim taken over says so once and stops refreshing.
  monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)
  theirs = {"host": "another-host", "pid": 1, "token": "theirs"}
  with claims.held(path, 60):
    storage.write_json(path, theirs)
    deadline = time.time() + 10
    while time.time() < deadline and not any(
        "lost the claim" in r.getMessage() for r in caplog.records):
      time.sleep(0.02)
    time.sleep(0.2)
  assert storage.read_json(path) == theirs  # kept: not ours to remove
  assert sum("lost the claim" in r.getMessage() for r in caplog.records) == 1


def test_checkpoints_save_restore_and_move_aside_on_gs(gcs):
  directory = f"gs://{BUCKET}/ckpt-{uuid.uuid4().hex[:8]}"
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(7)}
  manager = checkpoints.open_manager(directory, keep=3)
  checkpoints.save(manager, 1, state, {"note": "first"})
  checkpoints.save(manager, 2, jax.tree.map(lambda a: a + 1, state), {"note": "second"})
  # Break step 2: every array file of its state, as a truncated upload would.
  for (bucket, name) in gcs.objects:
    if name.startswith(directory.split("/", 3)[3] + "/2/state/") and "/d/" in name:
      storage.path(f"gs://{bucket}/{name}").write_bytes(b"garbage")
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  step, restored, progress = checkpoints.restore_latest(manager, abstract)
  assert step == 1 and progress["note"] == "first"
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert storage.listdir(os.path.join(directory, checkpoints.CORRUPT)) == ["2"]
  assert manager.all_steps() == [1]


def test_a_sweep_runs_end_to_end_with_a_gs_workdir_and_data_dir(gcs, tmp_path):
  workdir = f"gs://{BUCKET}/run"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, "tests", ".jax_cache"))
  env[data.MIRROR_ENV] = str(tmp_path / "mirror")
  command = [sys.executable, "-m", "experiments.sweep", "--config=tests/fixtures/tiny_sweep.py",
             f"--workdir={workdir}", f"--config.data_dir=gs://{BUCKET}/sweep-data",
             "--config.total_steps=10", "--config.checkpoint_every=5", "--config.log_every=5",
             "--config.eval_every=10",
             f"--jax_cache_dir={os.path.join(ROOT, 'tests', '.jax_cache')}"]
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  names = {n for bucket, n in gcs.objects if bucket == BUCKET and n.startswith("run/")}
  trials = [t["id"] for t in storage.read_json(f"{workdir}/sweep.json")["trials"]]
  statuses = {t: storage.read_json(f"{workdir}/trials/{t}/result.json")["status"] for t in trials}
  assert sorted(statuses.values()) == ["completed", "completed", "diverged", "diverged"]
  for tid, status in statuses.items():
    assert {f"run/trials/{tid}/{n}" for n in ("config.json", "metrics.jsonl", "trial.json")} <= names
    if status == "completed":  # orbax (tensorstore) wrote its checkpoints to the store
      assert f"run/trials/{tid}/checkpoints/10/_CHECKPOINT_METADATA" in names
  assert {"run/tables/accuracy.md", "run/tables/accuracy_0.png"} <= names
  # The data too: generated once, into the bucket, read from this host's mirror of it.
  data_files = {n for b, n in gcs.objects if n.startswith("sweep-data/")}
  assert any(n.endswith("/dataset_info.json") for n in data_files), sorted(data_files)
  assert any(".array_record" in n for n in data_files)
  assert not any("claim.json" in n for n in names)  # every claim released
  assert sum(n.startswith("run/events/") for n in names) == 8  # a start and an end each
  assert "| completed |" in done.stdout

  # Run again: every trial is finished, nothing runs.
  again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert sum(n.startswith("run/events/") for b, n in gcs.objects) == 8
  # The tables read back from the store (in this process: the binary is
  # tests/test_tables.py's; what differs on gs:// is only where the files are).
  from attention_research.sweep import tables  # pylint: disable=g-import-not-at-top
  assert "**accuracy**" in tables.render(workdir)


def test_a_gs_data_dir_is_generated_once_uploaded_whole_and_mirrored_by_other_hosts(
    gcs, tmp_path, monkeypatch):
  config = tiny_sweep.get_config()
  data_dir = f"gs://{BUCKET}/data-{uuid.uuid4().hex[:8]}"
  monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path / "host0"))
  first = data.prepare(config.task, config.task_options, data_dir)
  mirror = tmp_path / "host0" / "gs" / BUCKET
  assert os.fspath(first.data_path).startswith(os.fspath(mirror))  # read from local disk
  version_dir = os.path.relpath(first.data_path, mirror)
  uploaded = {name: generation for (bucket, name), (generation, _) in gcs.objects.items()
              if name.startswith(version_dir + "/")}
  local = sorted(os.listdir(first.data_path))
  assert sorted(n.rsplit("/", 1)[1] for n in uploaded) == local
  assert any(".array_record" in n for n in local)
  # Uploaded last: a host that sees it finds every other file there.
  assert max(uploaded, key=uploaded.get) == f"{version_dir}/dataset_info.json"
  assert not any(n.endswith(".lock") for (_, n) in gcs.objects)  # claims released

  # Another host (its own mirror) downloads the dataset; it does not generate it.
  monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path / "host1"))
  with mock.patch.object(tfds.core.GeneratorBasedBuilder, "download_and_prepare",
                         side_effect=AssertionError("generated again")):
    second = data.prepare(config.task, config.task_options, data_dir)
  assert os.fspath(second.data_path).startswith(os.fspath(tmp_path / "host1"))
  assert sorted(os.listdir(second.data_path)) == local
  assert os.listdir(os.path.dirname(second.data_path)) == [os.path.basename(second.data_path)]
  for split in ("train", "test"):
    a, b = first.as_data_source()[split], second.as_data_source()[split]
    assert len(a) == len(b) > 0
    for i in (0, len(a) - 1):
      assert a[i].keys() == b[i].keys()
      for name in a[i]:
        np.testing.assert_array_equal(a[i][name], b[i][name])
