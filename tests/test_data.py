"""Tests for the generated tasks and their Grain pipelines (attention_research/data/).

Each task's stored examples are checked against a rule written here, apart
from the generator: ListOps labels by a stack evaluator over the token ids,
MQAR targets by looking the queried key up in the key-value prefix, copying
against the sequence built directly from the payload, order by locating the
markers. The pipelines are checked for determinism, padding and masks, the
iterator state round trip, two-process sharding and exact eval coverage; processes
sharing a fresh data_dir generate each dataset once.
"""

import collections
import importlib
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import ml_collections
import pytest
import tensorflow_datasets as tfds

from attention_research import claims
from attention_research import data
from attention_research.data import listops
from tests.test_train import ROOT
from tests.test_train import run_env
from tests.test_train import train_command

prepare = importlib.import_module("attention_research.data.prepare")  # data.prepare is the function

tfds.disable_progress_bar()

TINY = {
    "listops": {"max_depth": 4, "max_args": 5, "min_len": 8, "max_len": 40,
                "num_train": 64, "num_test": 20},
    "mqar": {"vocab_size": 64, "seq_len": 32, "num_kv_pairs": 4, "num_train": 64,
             "num_test": 20},
    "copy": {"mode": "reverse", "length": 8, "vocab_size": 12, "num_train": 64,
                "num_test": 20},
    "order": {"length": 12, "num_markers": 3, "vocab_size": 10, "num_train": 64,
              "num_test": 20},
    "pathfinder": {"image_size": 16, "contour_length": 3, "segment_length": 3,
                   "num_distractors": 0, "num_train": 64, "num_test": 20},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def stored(name, options, data_dir, split="train"):
  """All examples of a prepared split, in stored order, as dicts of NumPy arrays."""
  src = data.prepare(name, options, data_dir).as_data_source()[split]
  return [src[i] for i in range(len(src))]


def key(example):
  """A hashable identity for a stored example."""
  return tuple((k, tuple(np.asarray(v).ravel().tolist())) for k, v in sorted(example.items()))


# --- registry and options ----------------------------------------------------

def test_registry_entries():
  assert data.names() == ["listops", "mqar", "copy", "order", "pathfinder", "lra_text",
                          "lra_image", "lra_retrieval", "stdlib_bytes"]
  kinds = {name: data.get_task(name).kind for name in data.names()}
  assert kinds == {"listops": "classification", "mqar": "lm", "copy": "lm",
                   "order": "classification", "pathfinder": "classification",
                   "lra_text": "classification", "lra_image": "classification",
                   "lra_retrieval": "pair", "stdlib_bytes": "lm"}
  assert [n for n in data.names() if data.get_task(n).source] == ["lra_text"]
  assert data.vocab_size("listops", None) == 16  # pad, 10 digits, 4 operators, "]"
  assert data.num_classes("listops", None) == 10
  assert data.vocab_size("mqar", {"vocab_size": 100}) == 100
  assert data.num_classes("mqar", None) is None
  assert data.num_classes("copy", None) is None
  assert data.num_classes("order", {"num_markers": 4, "vocab_size": 8}) == 4
  task = data.get_task("mqar")
  assert task.options["power_a"] == 0.01
  config = ml_collections.ConfigDict({"seq_len": 48, "power_a": 1})
  assert data.resolve_options("mqar", config) == {**task.options, "seq_len": 48, "power_a": 1.0}
  with pytest.raises(TypeError):
    task.options["power_a"] = 0.5  # defaults are read-only


@pytest.mark.parametrize("name, options", [
    ("listops", {"min_len": 20, "max_len": 40}),
    ("mqar", {"seq_len": 48, "num_kv_pairs": 4, "vocab_size": 64}),
    ("copy", {"length": 7}),
    ("order", {"length": 33}),
])
def test_sequence_length_is_the_longest_generated_example(name, options):
  """The trainer refuses a max_len below it; it must be what the generator produces."""
  task = data.get_task(name)
  opts = data.resolve_options(name, options)
  lengths = [len(task.generate(opts, "train", i)["inputs"]) for i in range(200)]
  assert max(lengths) == data.sequence_length(name, options)


@pytest.mark.parametrize("name, options, match", [
    ("lisstops", {}, "registered tasks"),
    ("mqar", {"num_pairs": 4}, "num_pairs.*num_kv_pairs"),
    ("mqar", {"num_train": 0}, "num_train"),
    ("mqar", {"seed": -1}, "seed"),
    ("mqar", {"seq_len": True}, "seq_len"),
    ("mqar", {"seq_len": 30, "num_kv_pairs": 8}, "seq_len"),
    ("mqar", {"vocab_size": 16, "num_kv_pairs": 8}, "vocab_size"),
    ("mqar", {"power_a": 0.0}, "power_a"),
    ("listops", {"max_args": 1}, "max_args"),
    ("listops", {"min_len": 50, "max_len": 40}, "max_len"),
    ("listops", {"max_depth": 1, "max_args": 2, "min_len": 5, "max_len": 7}, "no expression"),
    ("copy", {"mode": "rotate"}, "mode.*copy.*reverse"),
    ("copy", {"vocab_size": 2}, "vocab_size"),
    ("order", {"num_markers": 1}, "num_markers"),
    ("order", {"length": 2, "num_markers": 3}, "length"),
    ("order", {"vocab_size": 4, "num_markers": 3}, "vocab_size"),
])
def test_bad_names_and_options_raise(name, options, match):
  with pytest.raises(ValueError, match=match):
    data.resolve_options(name, options)


def test_bad_pipeline_arguments_raise(data_dir):
  opts = TINY["copy"]
  kw = {"data_dir": data_dir, "max_len": 16}
  with pytest.raises(ValueError, match="global_batch_size.*divisible"):
    data.train_iterator("copy", opts, global_batch_size=6, seed=0, process_index=0,
                        process_count=4, **kw)
  with pytest.raises(ValueError, match="process_index"):
    data.eval_batches("copy", opts, global_batch_size=8, process_index=2, process_count=2,
                      **kw)
  with pytest.raises(ValueError, match="max_len"):
    data.eval_batches("copy", opts, data_dir=data_dir, global_batch_size=8, max_len=0,
                      process_index=0, process_count=1)
  with pytest.raises(ValueError, match="split.*test.*train"):
    data.eval_batches("copy", opts, global_batch_size=8, split="validation",
                      process_index=0, process_count=1, **kw)
  with pytest.raises(ValueError, match="seed"):
    data.train_iterator("copy", opts, global_batch_size=8, seed=-3, process_index=0,
                        process_count=1, **kw)


# --- each task against an independent check ----------------------------------

def evaluate_listops(ids):
  """Value and structure of a ListOps token sequence, by a stack machine."""
  ops = {listops.TOKEN_ID[t]: t for t in listops.OPERATORS}
  stack, depth, max_depth, arg_counts = [[]], 0, 0, []
  for t in np.asarray(ids).tolist():
    if t in ops:
      stack.append([ops[t]])
      depth += 1
      max_depth = max(max_depth, depth)
    elif t == listops.CLOSE:
      op, *args = stack.pop()
      arg_counts.append(len(args))
      value = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(np.median(a)),
               "[SM": lambda a: sum(a) % 10}[op](args)
      stack[-1].append(value)
      depth -= 1
    else:
      assert 1 <= t <= 10, t
      stack[-1].append(t - 1)
  assert len(stack) == 1 and len(stack[0]) == 1, "unbalanced expression"
  return stack[0][0], max_depth, arg_counts


def check_listops(example, opts):
  value, depth, arg_counts = evaluate_listops(example["inputs"])
  assert value == example["label"]
  assert opts["min_len"] <= len(example["inputs"]) <= opts["max_len"]
  assert depth <= opts["max_depth"]
  assert all(2 <= k <= opts["max_args"] for k in arg_counts)


def test_listops_labels_match_an_independent_evaluator(data_dir):
  opts = TINY["listops"]
  for split in ("train", "test"):
    for example in stored("listops", opts, data_dir, split):
      check_listops(example, opts)
  # LRA-like sizes, straight from the generator: long, deep expressions too
  big = data.resolve_options("listops", {"min_len": 400, "max_len": 512})
  lengths = []
  for i in range(40):
    example = listops.generate(big, "train", i)
    check_listops(example, big)
    lengths.append(len(example["inputs"]))
  assert min(lengths) < 450 < max(lengths)  # lengths spread over the range


def test_listops_in_lras_form_is_the_same_tree_without_its_closing_brackets():
  opts = data.resolve_options("listops", TINY["listops"])
  lra = data.resolve_options("listops", {**TINY["listops"], "form": "lra"})
  assert data.sequence_length("listops", lra) == opts["max_len"]  # a bound
  for i in range(30):
    ours, theirs = listops.generate(opts, "train", i), listops.generate(lra, "train", i)
    assert theirs["label"] == ours["label"]
    kept = [t for t in ours["inputs"].tolist() if t != listops.CLOSE]
    assert theirs["inputs"].tolist() == kept and listops.CLOSE not in kept
    # LRA's text: operators and digits, as its tokenizer (alphanumeric runs) read them.
    words = listops.decode(theirs["inputs"]).replace("[", "").split()
    assert set(words) <= {"MIN", "MAX", "MED", "SM"} | {str(d) for d in range(10)}
  with pytest.raises(ValueError, match=r"listops: option `form` must be one of "
                                       r"\['brackets', 'lra'\], got 'tsv'"):
    data.resolve_options("listops", {"form": "tsv"})


def test_listops_exact_lengths_at_tight_limits():
  # max_depth 2, max_args 2: sizes 1, 4 (op of 2 digits), 7 and 10 (two levels)
  opts = data.resolve_options("listops", {"max_depth": 2, "max_args": 2, "min_len": 5,
                                          "max_len": 10})
  assert listops.feasible_lengths(2, 2, 5, 10) == (7, 10)
  for i in range(50):
    example = listops.generate(opts, "test", i)
    check_listops(example, opts)
    assert len(example["inputs"]) in (7, 10)


def test_mqar_targets_are_the_queried_keys_values(data_dir):
  opts = data.resolve_options("mqar", TINY["mqar"])
  n, half = opts["num_kv_pairs"], opts["vocab_size"] // 2
  for example in stored("mqar", opts, data_dir):
    inputs, targets, mask = example["inputs"], example["targets"], example["target_mask"]
    assert inputs.shape == targets.shape == mask.shape == (opts["seq_len"],)
    np.testing.assert_array_equal(targets[:-1], inputs[1:])  # next-token targets
    assert inputs.min() >= 1 and targets.max() < opts["vocab_size"]
    keys, values = inputs[0:2 * n:2], inputs[1:2 * n:2]
    assert len(set(keys.tolist())) == n and np.all((keys >= 1) & (keys < half))
    assert np.all(values >= half)
    lookup = dict(zip(keys.tolist(), values.tolist()))
    queried = np.flatnonzero(mask)
    assert len(queried) == n and np.all(queried >= 2 * n) and np.all((queried - 2 * n) % 2 == 0)
    assert sorted(inputs[queried].tolist()) == sorted(lookup)  # each key queried once
    for t in queried:
      assert targets[t] == lookup[inputs[t]]


def test_mqar_query_gaps_follow_the_power_law():
  def first_slot_rate(power_a):
    opts = data.resolve_options("mqar", {"vocab_size": 64, "seq_len": 128, "num_kv_pairs": 4,
                                         "power_a": power_a})
    hits = [data.get_task("mqar").generate(opts, "train", i)["target_mask"][8]
            for i in range(400)]
    return np.mean(hits)
  # 60 slots, 4 queries: uniform gaps use the first slot 4/60 of the time;
  # Zoology's power_a = 0.01 puts about 1/4.7 of the mass on each draw's first slot
  assert first_slot_rate(1.0) < 0.15
  assert first_slot_rate(0.01) > 0.4


def test_mqar_guessing_baselines_match_guessing_on_generated_sequences():
  # Play both guessers on generated sequences: the expected hit of a uniform guess is
  # 1 / the candidates, which are the pairs' values (all, or those not yet asked for).
  from attention_research.data import mqar
  opts = data.resolve_options("mqar", {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 5})
  all_values, not_asked = [], []
  for i in range(200):
    example = mqar.generate(opts, "test", i)
    inputs, targets = example["inputs"], example["targets"]
    values = set(inputs[1:10:2].tolist())
    for t in np.flatnonzero(example["target_mask"]):
      assert targets[t] in values
      asked = {targets[q] for q in np.flatnonzero(example["target_mask"]) if q < t}
      all_values.append(1 / len(values))
      not_asked.append(1 / len(values - asked))
  assert mqar.guessing_accuracy(5) == pytest.approx(np.mean(all_values)) == 0.2
  assert mqar.guessing_accuracy(5, skip_asked=True) == pytest.approx(np.mean(not_asked))
  assert mqar.guessing_accuracy(4, skip_asked=True) == pytest.approx(25 / 48)
  with pytest.raises(ValueError, match=r"mqar: num_kv_pairs must be a positive integer, got 0"):
    mqar.guessing_accuracy(0)


@pytest.mark.parametrize("mode", ["copy", "reverse"])
def test_copying_matches_a_direct_construction(data_dir, mode):
  opts = {**TINY["copy"], "mode": mode}
  n = opts["length"]
  for example in stored("copy", opts, data_dir):
    payload = example["inputs"][:n]
    assert np.all((payload >= 2) & (payload < opts["vocab_size"]))
    answer = payload if mode == "copy" else payload[::-1]
    seq = np.concatenate([payload, [1], answer])
    np.testing.assert_array_equal(example["inputs"], seq[:-1])
    np.testing.assert_array_equal(example["targets"], seq[1:])
    np.testing.assert_array_equal(example["target_mask"], [False] * n + [True] * n)


def order_label(ids, num_markers):
  """Which marker (marker c is token c + 1) occurs first."""
  for t in np.asarray(ids).tolist():
    if 1 <= t <= num_markers:
      return t - 1
  raise AssertionError("no marker")


def test_order_classes_differ_only_by_position(data_dir):
  opts = TINY["order"]
  k = opts["num_markers"]
  examples = stored("order", opts, data_dir)
  for example in examples:
    ids = example["inputs"]
    assert sorted(ids[ids <= k].tolist()) == list(range(1, k + 1))  # each marker once
    assert np.all(ids >= 1) and ids.max() < opts["vocab_size"]
    label = order_label(ids, k)
    assert label == example["label"]
    first = int(np.flatnonzero(ids == label + 1)[0])
    for c in range(k):
      swapped = ids.copy()
      other = int(np.flatnonzero(ids == c + 1)[0])
      swapped[first], swapped[other] = ids[other], ids[first]
      assert collections.Counter(swapped.tolist()) == collections.Counter(ids.tolist())
      assert order_label(swapped, k) == c
  counts = np.bincount([e["label"] for e in examples], minlength=k)
  assert counts.max() - counts.min() <= 1, counts


# --- determinism and storage ---------------------------------------------------

@pytest.mark.parametrize("name", sorted(TINY))
def test_same_options_same_data_and_seed_changes_it(name, data_dir, tmp_path):
  opts = TINY[name]
  here = stored(name, opts, data_dir)
  there = stored(name, opts, tmp_path)
  assert [key(e) for e in here] == [key(e) for e in there]
  # what is stored is exactly what the generator makes, in some order
  task = data.get_task(name)
  full = data.resolve_options(name, opts)
  direct = [task.generate(full, "train", i) for i in range(opts["num_train"])]
  assert sorted(map(key, here)) == sorted(map(key, direct))
  # another seed: another directory in the same data_dir, other examples
  reseeded = stored(name, {**opts, "seed": 1}, data_dir)
  assert len(set(map(key, reseeded)) & set(map(key, here))) < len(here) // 4
  names = {data.builder(name, o, data_dir).builder_config.name
           for o in (opts, {**opts, "seed": 1})}
  assert len(names) == 2
  tests = stored(name, opts, data_dir, "test")
  assert len(tests) == opts["num_test"]


# --- pipeline: padding, iterator state, sharding, eval -----------------------

def test_example_features_pad_and_cut():
  raw = {"inputs": np.array([5, 6, 7], np.int32), "label": 2}
  out = data.example_features(raw, kind="classification", max_len=5)
  np.testing.assert_array_equal(out["inputs"], [5, 6, 7, 0, 0])
  np.testing.assert_array_equal(out["input_mask"], [1, 1, 1, 0, 0])
  assert out["targets"] == 2 and out["example_mask"] and "target_mask" not in out
  raw = {"inputs": np.array([3, 4, 5, 6], np.int32), "targets": np.array([4, 5, 6, 9], np.int32),
         "target_mask": np.array([0, 1, 1, 1], bool)}
  out = data.example_features(raw, kind="lm", max_len=6)
  np.testing.assert_array_equal(out["targets"], [4, 5, 6, 9, 0, 0])
  np.testing.assert_array_equal(out["target_mask"], [0, 1, 1, 1, 0, 0])
  out = data.example_features(raw, kind="lm", max_len=2)
  np.testing.assert_array_equal(out["inputs"], [3, 4])
  np.testing.assert_array_equal(out["target_mask"], [0, 1])
  assert out["input_mask"].all()


@pytest.mark.parametrize("name, max_len", [("listops", 24), ("copy", 20), ("copy", 10)])
def test_batches_hold_the_examples_padded_or_cut(name, max_len, data_dir):
  opts = TINY[name]
  kind = data.get_task(name).kind
  raw = stored(name, opts, data_dir, "test")
  batches = list(data.eval_batches(name, opts, data_dir=data_dir, global_batch_size=8,
                                   max_len=max_len, process_index=0, process_count=1))
  rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(8)]
  for example, row in zip(raw, rows):  # one process: stored order
    tokens = example["inputs"][:max_len]
    n = len(tokens)
    assert row["inputs"].dtype == np.int32 and row["input_mask"].dtype == bool
    np.testing.assert_array_equal(row["inputs"][:n], tokens)
    assert not row["inputs"][n:].any()
    np.testing.assert_array_equal(row["input_mask"], np.arange(max_len) < n)
    if kind == "classification":
      assert row["targets"] == example["label"]
    else:
      np.testing.assert_array_equal(row["targets"][:n], example["targets"][:max_len])
      np.testing.assert_array_equal(row["target_mask"][:n], example["target_mask"][:max_len])
      assert not row["target_mask"][n:].any() and not row["targets"][n:].any()
  for row in rows[len(raw):]:  # eval padding
    assert not row["example_mask"] and not row["input_mask"].any() and not row["inputs"].any()


def train_batches(name, *, count, process_index=0, process_count=1, seed=0, batch=8,
                  data_dir, state=None):
  it = data.train_iterator(name, TINY[name], data_dir=data_dir, global_batch_size=batch,
                           max_len=32, seed=seed, process_index=process_index,
                           process_count=process_count)
  if state is not None:
    it.set_state(state)
  return it, [next(it) for _ in range(count)]


def rows_of(batches, field="inputs"):
  return [tuple(row.tolist()) for b in batches for row in b[field]]


def test_iterator_state_restores_the_same_batches(data_dir):
  it, _ = train_batches("mqar", count=3, data_dir=data_dir)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint would hold
  following = [next(it) for _ in range(2)]
  _, restored = train_batches("mqar", count=2, data_dir=data_dir, state=state)
  for a, b in zip(following, restored):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  _, other_seed = train_batches("mqar", count=5, seed=1, data_dir=data_dir)
  assert rows_of(other_seed) != rows_of([*train_batches("mqar", count=3, data_dir=data_dir)[1],
                                         *following])


def test_training_epochs_cover_the_split_and_reshuffle(data_dir):
  everything = sorted(rows_of([{"inputs": np.stack(
      [data.example_features(e, kind="lm", max_len=32)["inputs"]
       for e in stored("mqar", TINY["mqar"], data_dir)])}]))
  _, batches = train_batches("mqar", count=16, data_dir=data_dir)  # 64 examples / 8 = 8 per epoch
  first, second = rows_of(batches[:8]), rows_of(batches[8:])
  assert sorted(first) == everything and sorted(second) == everything
  assert first != second
  assert all(b["example_mask"].all() and b["inputs"].shape == (8, 32) for b in batches)


def test_two_processes_split_each_global_batch(data_dir):
  _, single = train_batches("copy", count=8, batch=8, data_dir=data_dir)
  it0, p0 = train_batches("copy", count=8, process_index=0, process_count=2, data_dir=data_dir)
  it1, p1 = train_batches("copy", count=8, process_index=1, process_count=2, data_dir=data_dir)
  # The trainer checkpoints one iterator state for all processes (orbax's JSON
  # item is written by the primary host), so the states must agree.
  assert it0.get_state() == it1.get_state()
  assert all(b["inputs"].shape == (4, 32) for b in p0 + p1)
  for whole, half0, half1 in zip(single, p0, p1):
    a, b = set(rows_of([half0])), set(rows_of([half1]))
    assert not a & b
    assert a | b == set(rows_of([whole]))
  # one epoch (64 examples = 8 global batches): disjoint, and together the split
  assert len(set(rows_of(p0)) | set(rows_of(p1))) == 64
  # process_index/count default to JAX's: one process here
  _, default = train_batches("copy", count=2, process_index=None, process_count=None,
                             data_dir=data_dir)
  assert rows_of(default) == rows_of(single[:2])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_the_split_exactly_once(process_count, data_dir):
  name, opts = "order", TINY["order"]
  expected = sorted(key({"inputs": e["inputs"], "label": np.int32(e["label"])})
                    for e in stored(name, opts, data_dir, "test"))
  seen, counts = [], []
  for p in range(process_count):
    ev = data.eval_batches(name, opts, data_dir=data_dir, global_batch_size=8, max_len=12,
                           process_index=p, process_count=process_count)
    batches = list(ev)
    assert len(batches) == len(ev) == 3  # ceil(20 / 8) on every process
    assert all(b["inputs"].shape == (8 // process_count, 12) for b in batches)
    mask = np.concatenate([b["example_mask"] for b in batches])
    counts.append(int(mask.sum()))
    assert mask[:counts[-1]].all() and not mask[counts[-1]:].any()  # padding only at the end
    for b in batches:
      for inputs, label, real in zip(b["inputs"], b["targets"], b["example_mask"]):
        if real:
          seen.append(key({"inputs": inputs, "label": np.int32(label)}))
    again = list(ev)  # the same on a second pass
    assert rows_of(again) == rows_of(batches)
  assert sorted(seen) == expected
  assert sum(counts) == 20


# --- a shared data_dir -------------------------------------------------------

def hold_lock(lock):
  """A live process (a `sleep`) as the holder of `lock`, as a generating process would be."""
  os.makedirs(os.path.dirname(lock), exist_ok=True)
  holder = subprocess.Popen(["sleep", "300"])
  with open(lock, "w") as f:
    json.dump({"host": claims.HOST, "boot_id": claims.BOOT_ID, "pid": holder.pid,
               "start_time": time.time(), "token": "elsewhere"}, f)
  return holder


def test_generation_waits_for_the_live_holder_of_the_lock_and_takes_a_dead_ones_over(tmp_path):
  options = TINY["order"]
  lock = os.fspath(prepare.builder("order", options, tmp_path).data_path) + ".lock"
  holder = hold_lock(lock)  # another live process "generating"
  done = []
  waiter = threading.Thread(target=lambda: done.append(data.prepare("order", options, tmp_path)))
  waiter.start()
  time.sleep(3)
  assert not done and not prepare._is_prepared(prepare.builder("order", options, tmp_path).data_path)
  holder.send_signal(signal.SIGKILL)  # the holder dies without generating: its lock goes stale
  holder.wait()
  waiter.join(timeout=120)
  assert done and done[0].info.splits["train"].num_examples == options["num_train"]
  assert not os.path.exists(lock)  # released once generated
  # What it generated is what a lone process generates.
  assert ([key(e) for e in stored("order", options, tmp_path)]
          == [key(e) for e in stored("order", options, tmp_path / "alone")])


def test_two_trainings_on_one_fresh_data_dir_both_finish(tmp_path):
  # Both start while a third process holds the lock, so both wait, and then
  # race to take it over when that process dies: one generates, one waits.
  data_dir = tmp_path / "data"
  options = dict(vocab_size=32, seq_len=24, num_kv_pairs=2, num_train=512, num_test=64)
  holder = hold_lock(os.fspath(prepare.builder("mqar", options, data_dir).data_path) + ".lock")
  steps = ["--config.total_steps=10", "--config.checkpoint_every=10"]
  logs = [tmp_path / f"log{i}" for i in range(2)]
  procs = [subprocess.Popen(train_command(tmp_path / f"run{i}", data_dir, *steps), cwd=ROOT,
                            env=run_env(), stdout=subprocess.DEVNULL, stderr=open(logs[i], "w"))
           for i in range(2)]
  deadline = time.time() + 120
  while not all("waiting for host" in log.read_text() for log in logs):
    assert time.time() < deadline and all(p.poll() is None for p in procs), [
        log.read_text()[-2000:] for log in logs]
    time.sleep(0.05)
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  for proc, log in zip(procs, logs):
    assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
  results = [json.load(open(tmp_path / f"run{i}" / "result.json")) for i in range(2)]
  assert results[0]["final_eval"] == results[1]["final_eval"]
  assert not [n for _, _, names in os.walk(data_dir) for n in names if n.endswith(".lock")]
