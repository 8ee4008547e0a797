"""Attention weights out of a trained model, and the inspection binary on a tiny checkpoint.

The weights are checked against the float64 reference and against each
variant's own output (weights @ values); the statistics against SciPy's
entropy and Jensen-Shannon distance; head ablation against a second way of
silencing a head (its value projection zeroed instead of its out slice).
"""

import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
from ml_collections import config_dict
import numpy as np
import pytest
from scipy.spatial import distance
from scipy import stats

from attention_research import attention
from attention_research import inspect
from attention_research import models
from tests import reference
from tests.test_train import ROOT
from tests.test_train import run_env
from tests.test_train import run_to_end

EXACT = [("dense", {}), ("blockwise", {"block_q": 4, "block_k": 4}), ("local", {"window": 3}),
         ("strided", {"stride": 3}), ("bigbird", {"block_size": 2})]


@pytest.mark.parametrize("name,options", EXACT)
@pytest.mark.parametrize("causal", [False, True])
def test_probabilities_are_the_weights_each_exact_variant_applies(name, options, causal):
  rng = np.random.default_rng(0)
  b, length, heads, kv_heads, d = 2, 12, 4, 2, 8
  q = rng.normal(size=(b, length, heads, d)).astype(np.float32)
  k = rng.normal(size=(b, length, kv_heads, d)).astype(np.float32)
  v = rng.normal(size=(b, length, kv_heads, d)).astype(np.float32)
  kv_mask = np.ones((b, length), bool)
  kv_mask[1, 9:] = False
  extra = {}
  if name == "dense":
    extra["alibi_slopes"] = attention.alibi_slopes(heads)
  p = np.asarray(attention.probabilities(name, jnp.asarray(q), jnp.asarray(k), causal=causal,
                                         kv_mask=jnp.asarray(kv_mask), **options, **extra))
  assert p.shape == (b, heads, length, length)
  pattern = attention.variant(name).mask(length, length, causal=causal,
                                         **attention.variant(name).resolved_options(options))
  allowed = reference.full_mask(b, heads, length, length, pattern, kv_mask)
  bias = reference.alibi_bias(extra["alibi_slopes"], length, length) if extra else None
  expected = reference._probabilities(q.astype(np.float64),
                                      reference.expand_kv(k, heads).astype(np.float64),
                                      allowed, bias)
  np.testing.assert_allclose(p, expected, atol=2e-6)
  # The variant's own output is these weights times the values.
  out = attention.get(name)(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=causal,
                            kv_mask=jnp.asarray(kv_mask), **options, **extra)
  weighted = np.einsum("bhqk,bkhd->bqhd", p, reference.expand_kv(v, heads))
  np.testing.assert_allclose(np.asarray(out), weighted, atol=2e-5)


def test_linear_variants_have_no_weights():
  x = jnp.ones((1, 4, 2, 8))
  with pytest.raises(ValueError, match=r"attention 'performer' is not softmax over keys and "
                                       r"has no attention weights; variants that have: \["):
    attention.probabilities("performer", x, x)


def _tiny_config(attention_name="dense"):
  from configs.tasks import copy as copy_task
  c = copy_task.get_config("scale=cpu")
  c.attention = attention_name
  c.task_options.update(length=8, num_train=64, num_test=16)
  c.max_len = 16
  c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 2, 16, 2, 32
  return c


def test_the_model_returns_its_weights_without_changing_its_output():
  settings = models.resolve(_tiny_config())
  model = models.build(settings, vocab_size=16)
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, 16, (2, 16)))
  mask = jnp.ones((2, 16), bool).at[1, 12:].set(False)
  params = model.init(jax.random.key(0), tokens, mask, train=False)["params"]
  plain = model.apply({"params": params}, tokens, mask, train=False)
  logits, state = model.apply({"params": params}, tokens, mask, train=False,
                              mutable=["intermediates"])
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(plain))
  found = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
  assert len(found) == 2  # one per layer
  for _, w in found:
    w = np.asarray(w)
    assert w.shape == (2, 2, 16, 16)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)     # every row (causal: key 0)
    assert (np.triu(w, 1) == 0).all()                          # causal
    assert (w[1, :, :, 12:] == 0).all()                        # padding keys get nothing


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-layer, 2-head decoder trained 60 steps on a small MQAR: its workdir."""
  root = tmp_path_factory.mktemp("inspect")
  workdir = root / "run"
  # test_train's tiny MQAR run, with what differs here after it (the last flag wins).
  run_to_end(workdir, root / "data", "--config.total_steps=60", "--config.log_every=20",
             "--config.eval_every=60", "--config.checkpoint_every=60",
             "--config.num_layers=2", "--config.d_model=16", "--config.mlp_dim=32",
             "--config.max_len=16", "--config.task_options.seq_len=16",
             "--config.task_options.num_train=1024", "--config.task_options.num_test=32")
  return workdir


def test_recall_hits_against_hand_built_weights():
  # Two MQAR rows of 8 tokens: pairs (5, 20) (6, 21) then noise, the queries at 5 and 6.
  inputs = np.array([[5, 20, 6, 21, 9, 6, 21, 5], [5, 20, 6, 21, 5, 20, 9, 9]])
  target_mask = np.zeros((2, 8), bool)
  target_mask[0, 5] = target_mask[1, 4] = True
  batch = {"inputs": inputs, "target_mask": target_mask, "example_mask": np.array([1, 1], bool)}
  keys = inspect.recall_positions(batch)
  assert keys[0, 5] == 2 and keys[1, 4] == 0 and (keys[target_mask == 0] == -1).all()
  weights = np.full((2, 2, 8, 8), 0.01)
  weights[0, 0, 5, 3] = weights[1, 0, 4, 1] = 1.0    # head 0: the value, both queries
  weights[0, 1, 5, 2] = weights[1, 1, 4, 3] = 1.0    # head 1: the key, then a wrong value
  value_hits, key_hits, queries = inspect.recall_hits(weights, batch)
  assert value_hits[:, 0][queries].all() and not value_hits[:, 1][queries].any()
  assert key_hits[0, 1, 5] and not key_hits[1, 1, 4]
  correct = np.zeros((2, 8), bool)
  correct[0, 5] = True                                # right on the first query only
  table = inspect.recall_table(value_hits, queries, correct)
  np.testing.assert_allclose(table[0], [1.0, 0.5, 2, np.nan, 0])
  np.testing.assert_allclose(table[1], [0.0, np.nan, 0, 0.5, 2])


def test_recall_by_distance_against_hand_counted_queries():
  # Pairs (5, 20) (6, 21) (7, 22), values at 1, 3 and 5; queries at 6 (key 7: 1 back),
  # 9 (key 5: 8 back) and 12 (key 6: 9 back); row 1 has one query, at 7 (key 6: 4 back).
  inputs = np.array([[5, 20, 6, 21, 7, 22, 7, 22, 9, 5, 20, 9, 6, 21],
                     [5, 20, 6, 21, 7, 22, 9, 6, 21, 9, 9, 9, 9, 9]])
  target_mask = np.zeros((2, 14), bool)
  target_mask[0, [6, 9, 12]] = target_mask[1, 7] = True
  batch = {"inputs": inputs, "target_mask": target_mask, "example_mask": np.array([1, 1], bool)}
  distances = inspect.recall_distances(batch)
  assert distances[0, [6, 9, 12]].tolist() == [1, 8, 9] and distances[1, 7] == 4
  assert (distances[~target_mask] == -1).all()
  correct = np.zeros((2, 14), bool)
  correct[0, 6] = correct[0, 12] = True
  local = config_dict.ConfigDict(dict(attention="local", attention_options=dict(window=4),
                                      num_layers=2))
  edges = inspect.distance_edges(local, 14)
  assert edges == [4, 8]
  rows = inspect.accuracy_by_distance(distances, target_mask, correct, edges)
  assert rows == [["1-4", 2, 0.5, 0.5], ["5-8", 1, 0.25, 0.0], ["> 8", 1, 0.25, 1.0]]
  # Other variants: powers of two; local without a window option takes the default 128.
  assert inspect.distance_edges(config_dict.ConfigDict(dict(attention="dense")), 64) == [8, 16,
                                                                                         32]
  local.attention_options = {}
  assert inspect.distance_edges(local, 64) == [128, 256]


def test_statistics_and_ablation_on_a_trained_checkpoint(trained):
  run = inspect.load(str(trained))
  assert run.step == 60 and run.kind == "lm"
  batches = [b for _, b in zip(range(2), inspect.eval_batches(run, batch_size=8))]
  weights = inspect.attention_weights(run, run.params, batches[0])
  assert [w.shape for w in weights] == [(8, 2, 16, 16)] * 2
  rows = inspect.query_rows(weights[0], batches[0])
  entropy = inspect.head_entropy(weights, batches[0])
  divergence = inspect.head_divergence(weights, batches[0])
  for layer, w in enumerate(weights):
    for h in range(2):
      expected = np.mean([stats.entropy(w[i, h, q], base=2) for i, q in zip(*np.nonzero(rows))])
      assert entropy[layer, h] == pytest.approx(expected, abs=1e-5)
    js = np.mean([distance.jensenshannon(w[i, 0, q], w[i, 1, q], base=2) ** 2
                  for i, q in zip(*np.nonzero(rows))])
    assert divergence[layer, 0, 1] == pytest.approx(js, abs=1e-5)
    assert divergence[layer, 1, 0] == divergence[layer, 0, 1] and divergence[layer, 0, 0] == 0
  # Removing a head by its out slice = removing it by its values (both silence it).
  base, delta = inspect.head_ablation(run, batches)
  assert base == pytest.approx(inspect.eval_loss(run, run.params, batches))
  for layer, head in [(0, 1), (1, 0)]:
    def zero_values(path, leaf):
      names = [str(getattr(p, "key", "")) for p in path]
      if names[-4:-1] == [f"block_{layer}", "attention", "value"]:
        return leaf.at[..., head, :].set(0.0)   # kernel [d, H, D], bias [H, D]
      return leaf
    silenced = jax.tree_util.tree_map_with_path(zero_values, run.params)
    assert delta[layer, head] == pytest.approx(
        inspect.eval_loss(run, silenced, batches) - base, abs=1e-5)
  assert np.abs(delta).max() > 1e-4   # the heads matter after training
  with pytest.raises(ValueError, match=r"`layer` must be in \[0, 2\): the model has no layer 5"):
    inspect.without_head(run.params, 5, 0)
  with pytest.raises(ValueError, match=r"`head` must be in \[0, 2\), got 2"):
    inspect.without_head(run.params, 0, 2)


def test_the_binary_writes_maps_and_the_head_table(trained, tmp_path):
  out = tmp_path / "inspect"
  done = subprocess.run([sys.executable, "-m", "experiments.inspect_attention",
                         f"--workdir={trained}", f"--out_dir={out}", "--num_batches=2",
                         f"--jax_cache_dir={os.path.join(ROOT, 'tests', '.jax_cache')}"],
                        cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["heads.json", "heads.md", "maps_layer0.png",
                                     "maps_layer1.png", "recall.md"]
  for name in ("maps_layer0.png", "maps_layer1.png"):
    with open(out / name, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(out / "heads.json"))
  assert np.asarray(saved["entropy_bits"]).shape == (2, 2) and saved["step"] == 60
  # MQAR: 32 test examples of 2 queries each (2 batches of 8 read: 16 examples).
  recall = saved["recall"]
  assert recall["num_queries"] == 32 and np.asarray(recall["table"]).shape == (2, 2, 5)
  assert "| layer | head | top key is the value |" in (out / "recall.md").read_text()
  # Dense attention: distances in powers-of-two bins (16 tokens: 1-8 and beyond), every query
  # in one of them.
  assert [row[0] for row in recall["by_distance"]] == ["1-8", "> 8"]
  assert sum(row[1] for row in recall["by_distance"]) == 32
  assert "| distance | queries | share | accuracy |" in (out / "recall.md").read_text()
  table = (out / "heads.md").read_text()
  assert done.stdout == table
  bad = subprocess.run([sys.executable, "-m", "experiments.inspect_attention",
                        f"--workdir={trained}", "--distance_edges=0,4"], cwd=ROOT, env=run_env(),
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 1 and "--distance_edges must be positive integers" in bad.stderr
  assert "| layer | head | entropy (bits) | JS to nearest head (bits) |" in table
  assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + 4


def test_summary_values_and_their_intervals_over_seeds():
  def heads_json(loss, js01, delta, hit):
    return {"eval_loss": loss, "entropy_bits": [[1.0, 2.0]], "js_divergence_bits": [
        [[0.0, js01], [js01, 0.0]]], "ablation_delta_loss": [delta],
            "recall": {"accuracy": hit, "by_distance": [["1-8", 3, 0.75, 1.0],
                                                        ["> 8", 1, 0.25, hit]],
                       "table": [[[0.1, 1.0, 1, 0.5, 9], [0.6, 0.9, 6, math.nan, 0]]]}}
  one = inspect.summary_values(heads_json(2.0, 0.5, [0.005, 0.3], 0.0))
  assert one == {"eval loss": 2.0, "entropy (bits)": 1.5, "JS to nearest head": 0.5,
                 "least JS to nearest head": 0.5, "largest loss without a head": 0.3,
                 "heads costing < 0.01": 1, "accuracy": 0.0, "share 1-8 back": 0.75,
                 "accuracy 1-8 back": 1.0, "share > 8 back": 0.25, "accuracy > 8 back": 0.0,
                 "best head": "L0H1", "its top key is the value": 0.6, "accuracy if so": 0.9,
                 "accuracy if not": pytest.approx(math.nan, nan_ok=True)}
  runs = [one, inspect.summary_values(heads_json(4.0, 0.1, [0.2, 0.3], 1.0)),
          inspect.summary_values(heads_json(3.0, 0.3, [0.2, 0.3], 1.0))]
  text = inspect.summarize({"attention=local": runs})
  header, _, row = text.splitlines()[:3]
  cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                   [c.strip() for c in row.strip("|").split("|")]))
  half = stats_t(3) * np.std([2.0, 4.0, 3.0], ddof=1) / np.sqrt(3)
  assert cells["eval loss"] == f"3 ± {half:.2g}" and cells["runs"] == "3"
  assert cells["best head"] == "L0H1, L0H1, L0H1"
  assert cells["accuracy if not"] == "n/a"   # no seed's best head ever missed
  half = stats_t(3) * np.std([1, 0, 0], ddof=1) / np.sqrt(3)
  assert cells["heads costing < 0.01"] == f"0.333 ± {half:.2g}"


def stats_t(n):
  return stats.t.ppf(0.975, n - 1)


def test_a_sweeps_trials_are_inspected_and_summarized_over_seeds(trained, tmp_path):
  sweep = tmp_path / "sweep"
  # Two completed seeds of one setting (the same run twice) and a third not run; a
  # setting that differs only inside a dict value (its name the same) is a row of its own.
  trials = [{"id": f"t{i}", "name": f"d_model=16, seed={i}",
             "overrides": {"d_model": 16, "seed": i}} for i in range(3)]
  trials += [{"id": f"w{i}", "name": f"d_model=16, o={{…}}, seed={i}",
              "overrides": {"d_model": 16, "o": {"window": w}, "seed": i}}
             for i, w in enumerate([4, 8])]
  for tid in ("t0", "t1", "w0", "w1"):
    shutil.copytree(trained, sweep / "trials" / tid)
  (sweep / "sweep.json").write_text(json.dumps({"trials": trials}))
  out = sweep / "inspect"
  summary = inspect.inspect_sweep(str(sweep), str(out), num_batches=2, edges=[2, 4])
  assert (out / "summary.md").read_text() == summary
  assert sorted(os.listdir(out)) == ["summary.md", "t0", "t1", "w0", "w1"]
  windows = [line for line in summary.splitlines() if line.startswith("| d_model=16,o={…} [")]
  assert len(windows) == 2 and all(line.split("|")[2].strip() == "1" for line in windows)
  assert "recall.md" in os.listdir(out / "t0")
  saved = json.load(open(out / "t0" / "heads.json"))
  assert [row[0] for row in saved["recall"]["by_distance"]] == ["1-2", "3-4", "> 4"]
  row = [line for line in summary.splitlines() if line.startswith("| d_model=16 ")]
  accuracy = saved["recall"]["accuracy"]
  assert len(row) == 1 and f"| 2 | {saved['eval_loss']:.3g} ± 0 |" in row[0]
  assert f" {accuracy:.3g} ± 0 " in row[0]
  assert "Left out (not run): d_model=16, seed=2\n" in summary


def test_runs_without_weights_or_checkpoints_are_refused(tmp_path):
  config = _tiny_config("linear").to_dict()
  (tmp_path / "linear").mkdir()
  (tmp_path / "linear" / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"config.attention='linear' is not softmax over keys"):
    inspect.load(str(tmp_path / "linear"))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "config.json").write_text(json.dumps(_tiny_config().to_dict()))
  with pytest.raises(ValueError, match=r"has no checkpoint that reads and verifies"):
    inspect.load(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match=r"has no config.json"):
    inspect.load(str(tmp_path / "nowhere"))
