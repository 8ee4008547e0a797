"""Verified restores: each way a checkpoint breaks falls back to an older one, never silently."""

import glob
import hashlib
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from attention_research import checkpoints
from attention_research import train
from tests.test_train import read_jsonl
from tests.test_train import tiny_config

# A restore that fails leaves orbax's read coroutines unawaited: noise, not a fault.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
TIMING = ("steps_per_s", "tokens_per_s")


def settings(data_dir):
  return tiny_config(data_dir, total_steps=40, checkpoint_every=10, keep_checkpoints=5,
                     dropout=0.1)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted run with checkpoints at steps 10, 20, 30 and 40."""
  root = tmp_path_factory.mktemp("straight")
  workdir = str(root / "run")
  result = train.train_and_evaluate(settings(root / "data"), workdir)
  assert result["status"] == "completed"
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20", "30", "40"]
  return root, workdir, result


def largest_array_file(step_dir):
  return max(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True),
             key=os.path.getsize)


def stored_bytes(step_dir):
  """Each array of the step's state as orbax alone reads it, or None if it does not read."""
  try:
    state = ocp.StandardCheckpointer().restore(os.path.join(step_dir, "state"))
  except Exception:  # pylint: disable=broad-except
    return None
  return [np.asarray(leaf).tobytes() for leaf in jax.tree_util.tree_leaves(state)]


def flip_a_bit(step_dir):
  """Flips one bit of the largest data file so that the step still reads, with a changed value.

  The arrays are zstd frames packed in an order that varies from save to save,
  and some bits (padding, superseded b-tree nodes) change nothing: a bit is
  tried from the middle on until orbax, read alone, returns a different value.
  """
  path = largest_array_file(step_dir)
  original = stored_bytes(step_dir)
  raw = bytearray(open(path, "rb").read())
  for at in range(len(raw) // 2, len(raw) // 2 + 64):
    raw[at] ^= 1
    open(path, "wb").write(bytes(raw))
    changed = stored_bytes(step_dir)
    if changed is not None and changed != original:
      return
    raw[at] ^= 1
  open(path, "wb").write(bytes(raw))
  raise AssertionError(f"no bit from the middle of {path} on changes a value silently")


def truncate(step_dir):
  path = largest_array_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


CORRUPTIONS = {
    "truncated data file": truncate,
    "missing manifest": lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
    "missing progress item": lambda d: shutil.rmtree(os.path.join(d, "progress")),
    "empty _METADATA": lambda d: open(os.path.join(d, "state", "_METADATA"), "w").close(),
    "flipped bit": flip_a_bit,
}


def without_timing(path):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(path)]


def killed_copy(straight, tmp_path):
  """The straight run as if killed after its last checkpoint: no result.json."""
  root, workdir, _ = straight
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  os.remove(os.path.join(copy, "result.json"))
  return root, copy


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_latest_checkpoint_falls_back_and_finishes_equal(straight, tmp_path, caplog,
                                                                    corruption):
  root, workdir = killed_copy(straight, tmp_path)
  step_dir = os.path.join(workdir, "checkpoints", "40")
  CORRUPTIONS[corruption](step_dir)
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(settings(root / "data"), workdir)
  assert result["status"] == "completed" and result["resumed_from_step"] == 30
  assert result["final_eval"] == straight[2]["final_eval"]  # to the last bit
  assert without_timing(os.path.join(workdir, "metrics.jsonl")) == without_timing(
      os.path.join(straight[1], "metrics.jsonl"))
  # Moved aside, not deleted; the log says which and why.
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "corrupt", "40"))
  said = [r.getMessage() for r in caplog.records if "is corrupt (" in r.getMessage()]
  assert len(said) == 1 and "step 40" in said[0], said
  if corruption == "flipped bit":
    assert "do not match the digests" in said[0]
  # The rerun wrote a fresh step 40 that reads and verifies.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      "10", "20", "30", "40", "corrupt"]


def test_with_every_checkpoint_corrupt_the_run_starts_over_and_says_so(straight, tmp_path,
                                                                        caplog):
  root, workdir = killed_copy(straight, tmp_path)
  for step in ("10", "20", "30", "40"):
    flip_a_bit(os.path.join(workdir, "checkpoints", step))
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(settings(root / "data"), workdir)
  assert result["status"] == "completed" and result["resumed_from_step"] is None
  assert result["final_eval"] == straight[2]["final_eval"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "corrupt"))) == [
      "10", "20", "30", "40"]
  assert any("starting over from step 0" in r.getMessage() for r in caplog.records)


def test_a_run_whose_checkpoints_are_gone_says_it_starts_over(straight, tmp_path, caplog):
  root, workdir = killed_copy(straight, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(settings(root / "data"), workdir)
  assert result["resumed_from_step"] is None
  assert result["final_eval"] == straight[2]["final_eval"]
  assert any("no checkpoint to resume: starting over from step 0" in r.getMessage()
             for r in caplog.records)


def test_a_rerun_after_the_last_checkpoint_keeps_numbers_for_speed(straight, tmp_path):
  root, workdir = killed_copy(straight, tmp_path)
  result = train.train_and_evaluate(settings(root / "data"), workdir)
  assert result["resumed_from_step"] == 40 and result["final_eval"] == straight[2]["final_eval"]
  # No window is logged in this life; the run's recorded windows give the speed.
  logged = [r["steps_per_s"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if "steps_per_s" in r]
  assert len(logged) == 8
  assert result["train_steps_per_s"] == pytest.approx(np.median(logged))
  assert result["train_step_time_s"] == pytest.approx(1 / np.median(logged))
  assert result["train_tokens_per_s"] > 0


def reference_digest(array):
  """The digest from its definition, one element at a time in Python integers."""
  array = np.asarray(array)
  bits = array.reshape(-1).view(f"u{array.dtype.itemsize}")
  m = 2**64

  def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % m
    return z ^ (z >> 31)
  total = sum(mix(int(b) ^ ((i * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % m))
              for i, b in enumerate(bits)) % m
  return hashlib.sha256(f"{array.dtype} {array.shape} {total}".encode()).hexdigest()


def test_digests_follow_their_definition_and_change_with_one_bit():
  w = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5
  state = {"w": jnp.asarray(w), "step": jnp.int32(7), "h": jnp.ones((5,), jnp.bfloat16)}
  found = checkpoints.digests(state)
  assert found == {"['w']": reference_digest(w), "['step']": reference_digest(np.int32(7)),
                   "['h']": reference_digest(np.ones((5,), jnp.bfloat16))}
  for element in range(w.size):  # any one bit of any one element
    flipped = w.copy()
    flipped.reshape(-1).view(np.uint32)[element] ^= 1 << (element % 32)
    assert checkpoints.digests({"w": jnp.asarray(flipped)})["['w']"] != found["['w']"]
  # Two top bits of 8-byte elements: a plain weighted sum of the bits would not see them.
  x = np.arange(4, dtype=np.int64)
  y = x.copy()
  y.view(np.uint64)[:2] ^= np.uint64(1 << 63)
  assert checkpoints.digests({"x": x}) != checkpoints.digests({"x": y})


def test_a_digest_adds_up_over_any_cut_of_the_array():
  """What lets each process add its own shards: blocks at their positions sum to the whole."""
  w = np.random.default_rng(0).standard_normal((4, 6, 5)).astype(np.float32)
  whole = checkpoints._block_sum(w, (slice(0, 4), slice(0, 6), slice(0, 5)), w.shape)
  cuts = [(slice(0, 2), slice(0, 6), slice(0, 5)), (slice(2, 4), slice(0, 3), slice(0, 5)),
          (slice(2, 4), slice(3, 6), slice(0, 2)), (slice(2, 4), slice(3, 6), slice(2, 5))]
  parts = sum(checkpoints._block_sum(w[cut], cut, w.shape) for cut in cuts) % 2**64
  assert parts == whole


def test_progress_records_the_digests_of_the_state_it_saved(straight):
  _, workdir, _ = straight
  with open(os.path.join(workdir, "checkpoints", "40", "progress", "metadata")) as f:
    progress = json.load(f)
  manager = checkpoints.open_manager(os.path.join(workdir, "checkpoints"), 5)
  restored = manager.restore(40, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                         progress=ocp.args.JsonRestore()))
  assert restored["progress"] == progress
  # Restored without the trainer's tree, the optimizer state's paths differ;
  # the parameters' and the step's do not.
  found = checkpoints.digests(restored["state"])
  assert len(found) == len(progress["digests"])
  kept = [k for k in found if k.startswith(("['params']", "['step']"))]
  assert len(kept) > 10 and all(found[k] == progress["digests"][k] for k in kept)
  assert progress["pending_metrics"] == []  # a scheduled checkpoint follows a log
