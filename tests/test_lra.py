"""Long Range Arena's real-data tasks on small fixtures, without a network: TFDS's own
builder writes `imdb_reviews` (its `_split_generators` replaced), and CIFAR-10's python
files and LRA's citation-pair TSVs are written in their formats. The records reach the
batches as each task converts them (checked against references computed here), the
trainer runs on each task end to end, and a missing dataset or file is an error naming
it, where it was looked for and how to get it."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attention_research import data
from tests import fake_gcs
from tests.test_train import ROOT
from tests.test_train import run_env

REVIEWS = {
    "train": [("A fine film. " * 40, 1), ("Dull.", 0), ("Ünïcode — 🎬 awful", 0),
              ("Loved it", 1), ("meh " * 300, 0), ("Great cast, great score.", 1)],
    "test": [("Not for me.", 0), ("Wonderful " * 120, 1), ("ok", 1)],
}


def write_tfds_fixture(name, data_dir, records):
  """TFDS dataset `name` in array_record files under data_dir, holding `records`
  ({split: [feature dict, ...]}), written by TFDS's own builder for it."""
  b = tfds.builder(name, data_dir=os.fspath(data_dir), file_format="array_record")

  def split_generators(self, dl_manager):
    del self, dl_manager
    return {split: ((i, r) for i, r in enumerate(rows)) for split, rows in records.items()}

  with mock.patch.object(type(b), "_split_generators", split_generators):
    b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def train_briefly(config, workdir, data_dir, *flags):
  """experiments.train for 4 steps of 2 examples on a task's config; its result.json."""
  command = [sys.executable, "-m", "experiments.train", f"--config={config}",
             f"--workdir={workdir}", f"--config.data_dir={data_dir}", "--config.total_steps=4",
             "--config.log_every=2", "--config.eval_every=4", "--config.checkpoint_every=4",
             "--config.batch_size=2", *flags,
             f"--jax_cache_dir={os.path.join(ROOT, 'tests', '.jax_cache')}"]
  done = subprocess.run(command, cwd=ROOT, env=run_env(), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.load(open(workdir / "result.json"))


@pytest.fixture(scope="module")
def imdb_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  write_tfds_fixture("imdb_reviews", data_dir,
                     {split: [{"text": text, "label": label} for text, label in rows]
                      for split, rows in REVIEWS.items()})
  return data_dir


def expected_tokens(text, max_len):
  return np.frombuffer(text.encode("utf-8")[:max_len], np.uint8).astype(np.int32) + 1


@pytest.mark.parametrize("max_len", [64, 4096])
def test_text_batches_hold_each_reviews_bytes_cut_to_max_len(imdb_dir, max_len):
  options = {"max_len": max_len}
  batches = list(data.eval_batches("lra_text", options, data_dir=imdb_dir, global_batch_size=2,
                                   max_len=max_len, process_index=0, process_count=1))
  rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(2)]
  assert len(batches) == 2 and not rows[-1]["example_mask"]  # 3 reviews, padded to 4
  for row in rows[:3]:
    n = int(row["input_mask"].sum())
    assert row["input_mask"][:n].all() and not row["inputs"][n:].any()
  # TFDS stores the records in an order of its own: compare them as a set.
  got = sorted((tuple(r["inputs"][r["input_mask"]].tolist()), int(r["targets"])) for r in rows[:3])
  assert got == sorted((tuple(expected_tokens(t, max_len).tolist()), l)
                       for t, l in REVIEWS["test"])
  train = data.train_iterator("lra_text", options, data_dir=imdb_dir, global_batch_size=6,
                              max_len=max_len, seed=0, process_index=0, process_count=1)
  batch = next(train)
  seen = sorted((tuple(r[m].tolist()), int(t)) for r, m, t in
                zip(batch["inputs"], batch["input_mask"], batch["targets"]))
  assert seen == sorted((tuple(expected_tokens(t, max_len).tolist()), l)
                        for t, l in REVIEWS["train"])  # one epoch: every review once


def test_a_missing_dataset_names_itself_the_directory_and_the_command(tmp_path):
  with pytest.raises(ValueError, match=(
      r"task 'lra_text' reads the TFDS dataset 'imdb_reviews/plain_text:1.0.0', which is not "
      rf"in {tmp_path}/imdb_reviews/plain_text/1.0.0; nothing is downloaded at run time: .*"
      rf"`tfds build imdb_reviews --file_format=array_record --data_dir={tmp_path}`")):
    data.prepare("lra_text", {}, tmp_path)


def test_the_trainer_runs_on_the_text_task(imdb_dir, tmp_path):
  result = train_briefly("configs/tasks/lra_text.py:scale=cpu,length=128", tmp_path / "run",
                         imdb_dir, "--config.num_layers=1", "--config.d_model=32",
                         "--config.mlp_dim=64")
  assert result["status"] == "completed" and result["final_eval"]["num_targets"] == 3


def test_a_gs_data_dir_is_downloaded_to_the_mirror(imdb_dir, tmp_path, monkeypatch):
  server = fake_gcs.start()
  try:
    with mock.patch.dict(os.environ, server.env):
      from attention_research import storage
      bucket = "gs://fake-bucket/tfds"
      storage.copy_files(imdb_dir / "imdb_reviews", f"{bucket}/imdb_reviews")
      monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path / "mirror"))
      b = data.prepare("lra_text", {}, bucket)
      assert os.fspath(b.data_path).startswith(os.fspath(tmp_path / "mirror"))
      assert len(b.as_data_source()["test"]) == len(REVIEWS["test"])
  finally:
    server.stop()


def write_cifar_fixture(manual_dir, archive):
  """CIFAR-10's python files (the layout of cifar-10-python.tar.gz: pickled dicts of
  uint8 rows [n, 3072], red then green then blue, and labels), with random images:
  2 a training batch, 3 in the test batch. Returns {file: (rows, labels)}."""
  rng = np.random.default_rng(0)
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  batches = {name: (rng.integers(0, 256, (3 if name == "test_batch" else 2, 3072),
                                 dtype=np.uint8), rng.integers(0, 10, 3).tolist())
             for name in names}
  batches = {name: (rows, labels[:len(rows)]) for name, (rows, labels) in batches.items()}
  folder = manual_dir / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  for name, (rows, labels) in batches.items():
    with open(folder / name, "wb") as f:
      pickle.dump({b"batch_label": name.encode(), b"data": rows, b"labels": labels}, f)
  if archive:
    with tarfile.open(manual_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
      tar.add(folder, arcname="cifar-10-batches-py")
    shutil.rmtree(folder)
  return batches


def grey_reference(rows):
  """tf.image.rgb_to_grayscale's weights, one pixel at a time, + 1 for padding."""
  out = []
  for row in rows:
    r, g, b = (row[c * 1024:(c + 1) * 1024].astype(float) for c in range(3))
    out.append([int(round(0.2989 * r[p] + 0.5870 * g[p] + 0.1140 * b[p])) + 1
                for p in range(1024)])
  return np.array(out)


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "archive"])
def test_image_splits_hold_cifars_images_in_grey(tmp_path, archive):
  batches = write_cifar_fixture(tmp_path / "downloads" / "manual", archive)
  b = data.prepare("lra_image", {"num_train": 6}, tmp_path)
  sources = b.as_data_source()
  train_rows = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
  train_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
  want = {"train": (train_rows[:6], train_labels[:6]),
          "validation": (train_rows[6:], train_labels[6:]),
          "test": batches["test_batch"]}
  for split, (rows, labels) in want.items():
    got = sorted((tuple(e["inputs"].tolist()), int(e["label"])) for e in sources[split])
    assert got == sorted(zip(map(tuple, grey_reference(rows).tolist()), labels)), split


def test_missing_cifar_files_name_the_directory_and_the_download(tmp_path):
  manual = tmp_path / "downloads" / "manual"
  with pytest.raises(ValueError, match=(
      rf"task 'lra_image' reads CIFAR-10's python files, found in neither "
      rf"{manual}/cifar-10-python.tar.gz nor {manual}/cifar-10-batches-py; nothing is "
      rf"downloaded at run time: download https://www.cs.toronto.edu/~kriz/"
      rf"cifar-10-python.tar.gz on a machine with network and put it in {manual}")):
    data.prepare("lra_image", {}, tmp_path)


def test_the_trainer_runs_on_the_image_task(tmp_path):
  write_cifar_fixture(tmp_path / "data" / "downloads" / "manual", archive=False)
  result = train_briefly("configs/tasks/lra_image.py:scale=cpu", tmp_path / "run",
                         tmp_path / "data", "--config.task_options.num_train=6")
  assert result["status"] == "completed" and result["final_eval"]["num_targets"] == 3


PAIRS = {
    "train": [(1, "Attention is all you need. " * 20, "Neural machine translation " * 5),
              (0, "Parsing with grammars", "Ünïcode 🎬 speech"), (1, "a b", "x")],
    "eval": [(0, "short", "also short")],
    "test": [(1, "cites " * 400, "cited"), (0, "no", "link")],
}


def write_aan_fixture(manual_dir, pairs=PAIRS):
  """LRA's new_aan_pairs.*.tsv files: label, id1, id2, text1, text2, tab-separated."""
  manual_dir.mkdir(parents=True)
  for split, rows in pairs.items():
    lines = [f"{float(label)}\tid{i}a\tid{i}b\t{t1}\t{t2}" for i, (label, t1, t2) in
             enumerate(rows)]
    (manual_dir / f"new_aan_pairs.{split}.tsv").write_text("\n".join(lines) + "\n",
                                                           encoding="utf-8")


def test_retrieval_batches_hold_both_documents_bytes(tmp_path):
  write_aan_fixture(tmp_path / "downloads" / "manual")
  batches = list(data.eval_batches("lra_retrieval", {"max_len": 64}, data_dir=tmp_path,
                                   global_batch_size=2, max_len=64, process_index=0,
                                   process_count=1))
  rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(2)]
  assert rows[0]["inputs"].shape == (2, 64) and rows[0]["input_mask"].shape == (2, 64)
  got = sorted((tuple(r["inputs"][0][r["input_mask"][0]].tolist()),
                tuple(r["inputs"][1][r["input_mask"][1]].tolist()), int(r["targets"]))
               for r in rows if r["example_mask"])
  want = sorted((tuple(expected_tokens(t1, 64).tolist()), tuple(expected_tokens(t2, 64).tolist()),
                 label) for label, t1, t2 in PAIRS["test"])
  assert got == want
  sizes = {s: len(v) for s, v in data.prepare("lra_retrieval", {"max_len": 64},
                                                tmp_path).as_data_source().items()}
  assert sizes == {"train": 3, "validation": 1, "test": 2}


def test_missing_pairs_name_the_files_and_the_release(tmp_path):
  write_aan_fixture(tmp_path / "downloads" / "manual", {"train": PAIRS["train"]})
  with pytest.raises(ValueError, match=(
      r"task 'lra_retrieval' reads LRA's citation pairs, and .*downloads/manual lacks "
      r"\['new_aan_pairs.eval.tsv', 'new_aan_pairs.test.tsv'\]; nothing is downloaded at run "
      r"time: download https://storage.googleapis.com/long-range-arena/lra_release.gz")):
    data.prepare("lra_retrieval", {}, tmp_path)


def test_the_trainer_runs_the_dual_encoder_on_retrieval(tmp_path):
  write_aan_fixture(tmp_path / "data" / "downloads" / "manual")
  result = train_briefly("configs/tasks/lra_retrieval.py:scale=cpu", tmp_path / "run",
                         tmp_path / "data", "--config.max_len=128",
                         "--config.task_options.max_len=128", "--config.num_layers=1",
                         "--config.d_model=32", "--config.mlp_dim=64")
  assert result["status"] == "completed" and result["final_eval"]["num_targets"] == 2


def test_a_pair_task_refuses_to_split_its_rows_over_context():
  from attention_research import train
  from configs.tasks import lra_retrieval
  config = lra_retrieval.get_config("scale=cpu")
  config.mesh.context = 2
  with pytest.raises(ValueError, match=r"config.mesh.context=2: task 'lra_retrieval' holds two "
                                       r"sequences a row \(the dual encoder\); allowed: 1"):
    train.validate_config(config, num_devices=2)


def test_every_task_of_the_table1_sweep_runs_through_the_sweep_runner(imdb_dir, tmp_path):
  """lra_table1's trials, one per task at cpu scale (its own grid runs ListOps and
  Pathfinder there; Text, Retrieval and Image are the paper-scale columns' tasks), shrunk
  to 2 steps of a 1-layer model, through the runner and into the table: one workdir,
  one data_dir holding the IMDB, CIFAR-10 and AAN fixtures."""
  from attention_research.sweep import runner
  from attention_research.sweep import tables
  from configs import common
  from configs.sweeps import lra_table1

  data_dir = tmp_path / "data"
  shutil.copytree(imdb_dir, data_dir)
  write_aan_fixture(data_dir / "downloads" / "manual")
  write_cifar_fixture(data_dir / "downloads" / "manual", archive=False)
  base = lra_table1.get_config("scale=cpu")
  base.data_dir = str(data_dir)
  headers = ["ListOps", "Text", "Retrieval", "Image", "Pathfinder"]
  grid = []
  for header in headers:
    overrides = lra_table1._task_block(header, base, "local")
    options = dict(overrides.get("task_options", base.task_options.to_dict()))
    max_len = overrides.get("max_len", base.max_len)
    if header in ("Text", "Retrieval"):  # bytes cut to 128, not 1000
      max_len = options["max_len"] = 128
    options.update({k: v for k, v in dict(num_train=8, num_test=4).items() if k in options})
    overrides.update(
        task_options=options, max_len=max_len, total_steps=2, batch_size=2, log_every=1,
        eval_every=2, checkpoint_every=2, num_layers=1, d_model=16, num_heads=2, mlp_dim=32,
        attention_options=common.attention_options("local", max_len), seed=0)
    grid.append(overrides)
  trials = runner.make_trials(base, grid)
  workdir = str(tmp_path / "sweep")
  spec = lra_table1.get_tables(lra_table1.get_config("scale=paper"))[0]
  spec["columns"]["Pathfinder"]["task_options.image_size"] = 16   # cpu scale's images
  statuses = runner.run(trials, workdir, tables=[spec])
  assert list(statuses.values()) == ["completed"] * len(headers)
  table = tables.build_table(spec, *tables.load(workdir)[1:])
  local = next(row for row in table["rows"] if row[0] == "local")
  # Every column but Path-X holds the one trial's accuracy (a number, n=1); the
  # Avg, over the five columns but Path-X, is their mean.
  for header, cell in zip(table["header"][1:7], local[1:7]):
    assert (cell == "") if header == "Path-X" else (0 <= float(cell) <= 100), (header, cell)
  assert table["header"][7] == "Avg"
  assert float(local[7]) == pytest.approx(np.mean([float(c) for c in local[1:6]]), abs=0.01)
  targets = {json.load(open(os.path.join(workdir, "trials", t[1], "result.json")))
             ["final_eval"]["num_targets"] for t in trials}
  assert targets <= {2, 3, 4}
