"""Looking inside a trained model's attention: weights, entropy, head similarity, ablation.

    run = inspect.load("runs/mqar")                    # the run's config and newest params
    batch = next(iter(inspect.eval_batches(run)))
    weights = inspect.attention_weights(run, run.params, batch)   # [layers][B, H, Lq, Lk]
    inspect.head_entropy(weights, batch)                # [layers, H], bits
    inspect.head_divergence(weights, batch)             # [layers, H, H], bits
    inspect.head_ablation(run, batches)   # (loss, [layers, H]: loss without each head - loss)

The weights come from the model itself (`apply(..., mutable=["intermediates"])`,
attention_layer.py), so they are the ones its output used, for every exact
variant (`attention.probabilities`). Statistics are over real query rows
(padding left out) and, in a causal model, over the keys each query may see.

- Entropy of a head: the mean over query rows of -sum_k p log2 p, in bits
  (0: one key; log2 n: uniform over n keys).
- Divergence between two heads: the mean over query rows of the
  Jensen-Shannon divergence of their weight rows, in bits (0: the same
  pattern; 1: disjoint keys). A head whose nearest other head is near 0 is a
  duplicate.
- Recall (MQAR, where the right key is known): at each query (a key seen
  before, whose value is the target), is the head's most-attended position
  the key's value in the context (the token to copy) or the key itself? And
  is the model's prediction right more often when it is? Per head: the hit
  rate and the accuracy on queries it hits and on queries it misses.
- Recall by distance (MQAR): the model's accuracy on the queries whose
  value stands 1 to w tokens back, w+1 to w x layers, and further, for local
  attention of window w (one layer sees the value itself within w; the layers
  together can carry it at most w x layers); powers-of-two bins otherwise.
- Ablation: a head's contribution is its slice of the attention's `out`
  kernel ([H, D, d_model]); zeroing it removes exactly that head's output from
  the residual stream. The table reports the eval loss with the head removed
  minus the loss with all heads.
"""

import collections
import dataclasses
import functools
import itertools
import math
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import config_dict
import numpy as np

from attention_research import attention
from attention_research import checkpoints
from attention_research import data
from attention_research import models
from attention_research import storage
from attention_research import train

WEIGHTS = "attention_weights"
_BLOCK = re.compile(r"block_(\d+)$")


@dataclasses.dataclass
class Run:
  config: Any        # the run's ConfigDict, from its config.json
  model: Any         # the flax model, built as the trainer built it
  params: Any        # the newest checkpoint's parameters
  step: int          # ... and its step
  kind: str          # the task's kind: classification, lm or pair
  apply: Any         # model.apply, jitted once: the ablation runs it layers x heads times


def load(workdir, *, data_dir=None):
  """The trained run in `workdir` (its config.json and newest verified checkpoint).

  As a resume would, it moves a checkpoint that does not verify aside (to
  checkpoints/corrupt/); inspect a run that has stopped, not one still writing.
  """
  try:
    saved = storage.read_json(os.path.join(workdir, "config.json"))
  except FileNotFoundError:
    raise ValueError(f"workdir {workdir!r} has no config.json: not a training run's "
                     f"directory (experiments.train writes one)") from None
  config = config_dict.ConfigDict(saved)
  if data_dir is not None:
    config.data_dir = data_dir
  if not attention.variant(config.attention).exact:
    exact = [n for n in attention.names() if attention.variant(n).exact]
    raise ValueError(f"config.attention={config.attention!r} is not softmax over keys, so the "
                     f"run has no attention weights to inspect; variants that have: {exact}")
  options = config.task_options.to_dict()
  kind = data.get_task(config.task).kind
  model = models.build(models.resolve(config), vocab_size=data.vocab_size(config.task, options),
                       num_classes=data.num_classes(config.task, options))
  optimizer = train.make_optimizer(config, train.learning_rate_schedule(config))
  length = config.max_len
  shape = (1, 2, length) if kind == "pair" else (1, length)
  state = jax.eval_shape(functools.partial(train.new_state, model, optimizer, jax.random.key(0),
                                           jnp.zeros(shape, jnp.int32), jnp.ones(shape, bool)))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          state)
  manager = checkpoints.open_manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  try:
    found = checkpoints.restore_latest(manager, abstract)
  finally:
    manager.close()
  if found is None:
    raise ValueError(f"workdir {workdir!r} has no checkpoint that reads and verifies "
                     f"(checkpoints/ is empty or every one is corrupt)")
  step, restored, _ = found
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  return Run(config, model, restored["params"], int(step), kind, apply)


def eval_batches(run, *, batch_size=8):
  """The run's eval split in batches (numpy dicts, as the trainer reads them)."""
  c = run.config
  options = c.task_options.to_dict()
  data.prepare(c.task, options, c.data_dir)
  return data.eval_batches(c.task, options, data_dir=c.data_dir, global_batch_size=batch_size,
                           max_len=c.max_len, process_index=0, process_count=1)


def first_batches(run, num_batches, *, batch_size=8):
  """The first `num_batches` of eval_batches, as a list (every statistic reads them)."""
  return [b for _, b in zip(range(num_batches), eval_batches(run, batch_size=batch_size))]


def _apply(run, params, batch, **kwargs):
  return run.apply({"params": params}, jnp.asarray(batch["inputs"]),
                   jnp.asarray(batch["input_mask"]), train=False, **kwargs)


def attention_weights(run, params, batch):
  """[layers] of float32 [B, H, Lq, Lk] in layer order (a dual encoder's: [2B, ...], each
  example's two documents in turn)."""
  _, state = _apply(run, params, batch, mutable=("intermediates",))
  found = {}
  for path, value in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
    names = [getattr(p, "key", getattr(p, "name", None)) for p in path]
    if WEIGHTS not in names:
      continue
    layers = [int(m.group(1)) for n in names if (m := _BLOCK.match(str(n)))]
    if not layers:
      raise ValueError(f"attention weights sown outside a block_<layer>: {names}")
    layer = layers[0]
    found.setdefault(layer, []).append(np.asarray(value))
  return [np.concatenate(found[layer]) for layer in sorted(found)]


def query_rows(weights, batch):
  """bool [B', Lq]: the query rows that are real tokens (B' matches the weights')."""
  mask = np.asarray(batch["input_mask"])
  mask = mask.reshape(-1, mask.shape[-1])  # pair: [B, 2, L] -> the encoder's [2B, L]
  rows = weights.shape[-2]
  if mask.shape[1] < rows:  # a CLS token in front
    mask = np.concatenate([np.ones((mask.shape[0], rows - mask.shape[1]), bool), mask], 1)
  examples = np.asarray(batch["example_mask"])
  return mask[:, :rows] & examples.repeat(mask.shape[0] // len(examples))[:, None]


def head_entropy(weights, batch):
  """float [layers, H]: each head's mean entropy over real query rows, in bits."""
  out = []
  for w in weights:
    rows = query_rows(w, batch)
    logs = np.log2(np.where(w > 0, w, 1.0))
    entropy = -(w * logs).sum(-1)  # [B, H, Lq]
    out.append([float(entropy[:, h][rows].mean()) for h in range(w.shape[1])])
  return np.asarray(out)


def head_divergence(weights, batch):
  """float [layers, H, H]: the mean Jensen-Shannon divergence (bits) between the weight
  rows of every two heads, over real query rows."""
  out = []
  for w in weights:
    rows = query_rows(w, batch)
    heads = w.shape[1]
    matrix = np.zeros((heads, heads))
    for a, b in itertools.combinations(range(heads), 2):
      p, q = w[:, a], w[:, b]
      m = (p + q) / 2
      kl = lambda x: (x * (np.log2(np.where(x > 0, x, 1.0)) -
                           np.log2(np.where(m > 0, m, 1.0)))).sum(-1)
      matrix[a, b] = matrix[b, a] = float(((kl(p) + kl(q)) / 2)[rows].mean())
    out.append(matrix)
  return np.asarray(out)


def recall_positions(batch):
  """int [B, Lq]: for each MQAR query (target_mask), the position of its key's first
  occurrence (the context pair; MQAR's keys are distinct); -1 elsewhere."""
  inputs, queries = np.asarray(batch["inputs"]), np.asarray(batch["target_mask"])
  out = np.full(inputs.shape, -1)
  for i, q in zip(*np.nonzero(queries & np.asarray(batch["example_mask"])[:, None])):
    earlier = np.flatnonzero(inputs[i, :q] == inputs[i, q])
    if len(earlier):
      out[i, q] = earlier[0]
  return out


def recall_hits(weights, batch):
  """(value_hits, key_hits, queries): bool [B, H, Lq] where a head's most-attended key is
  the query's key's value (the key's position + 1) or the key itself; queries bool
  [B, Lq], the query rows with a key in the context."""
  keys = recall_positions(batch)
  top = weights.argmax(-1)  # [B, H, Lq]
  queries = keys >= 0
  return (top == (keys + 1)[:, None]) & queries[:, None], \
         (top == keys[:, None]) & queries[:, None], queries


def recall_distances(batch):
  """int [B, Lq]: at each MQAR query, how far back the queried key's value stands in the
  context (the query's position - the value's, >= 1); -1 elsewhere."""
  keys = recall_positions(batch)
  return np.where(keys >= 0, np.arange(keys.shape[1])[None] - (keys + 1), -1)


def distance_edges(config, length):
  """The upper edges of recall's distance bins: for local attention its window (a query
  sees the value itself) and window x layers (the furthest the layers can carry it);
  for any other variant powers of two below `length`."""
  if config.attention == "local":
    window = config.attention_options.get("window",
                                          attention.variant("local").options["window"])
    return sorted({window, window * config.num_layers})
  return [2 ** i for i in range(3, max(3, math.ceil(math.log2(length))))]


def accuracy_by_distance(distances, queries, correct, edges):
  """[label, n, share of the queries, accuracy] per distance bin: (0, edges[0]],
  (edges[0], edges[1]], ..., > edges[-1]; accuracy NaN for an empty bin."""
  bounds = [0, *edges, math.inf]
  total = max(int(queries.sum()), 1)
  rows = []
  for low, high in zip(bounds[:-1], bounds[1:]):
    in_bin = queries & (distances > low) & (distances <= high)
    label = f"{low + 1}-{high}" if high != math.inf else f"> {low}"
    rows.append([label, int(in_bin.sum()), in_bin.sum() / total,
                 float(correct[in_bin].mean()) if in_bin.any() else math.nan])
  return rows


def recall_table(value_hits, queries, correct):
  """float [H, 5] for one layer: value-hit rate, accuracy when hit, n hit, accuracy when
  missed, n missed; `correct` bool [B, Lq], the model's prediction at each query."""
  rows = []
  for h in range(value_hits.shape[1]):
    hit = value_hits[:, h] & queries
    miss = queries & ~value_hits[:, h]
    rate = hit.sum() / max(queries.sum(), 1)
    accuracy = lambda m: float(correct[m].mean()) if m.any() else math.nan
    rows.append([float(rate), accuracy(hit), int(hit.sum()), accuracy(miss), int(miss.sum())])
  return np.asarray(rows, dtype=np.float64)


def recall_report(run, batches, edges=None):
  """Over `batches` of an MQAR run: {"num_queries", "accuracy", "value_hits" and
  "key_hits" ([layers][H] rates), "table" ([layers][H][5], recall_table), "by_distance"
  (accuracy_by_distance's rows at `edges`, default distance_edges)}."""
  value, key, queries, correct, distances = [], [], [], [], []
  for batch in batches:
    distances.append(recall_distances(batch))
    hits = [recall_hits(w, batch) for w in attention_weights(run, run.params, batch)]
    value.append(np.stack([v for v, _, _ in hits]))   # [layers, B, H, Lq]
    key.append(np.stack([k for _, k, _ in hits]))
    queries.append(hits[0][2])
    logits = np.asarray(_apply(run, run.params, batch))
    correct.append(logits.argmax(-1) == np.asarray(batch["targets"]))
  value, key = np.concatenate(value, axis=1), np.concatenate(key, axis=1)
  queries, correct = np.concatenate(queries), np.concatenate(correct)
  distances = np.concatenate(distances)
  edges = edges or distance_edges(run.config, queries.shape[1])
  n = max(int(queries.sum()), 1)
  return {"num_queries": int(queries.sum()),
          "accuracy": float(correct[queries].mean()) if queries.any() else math.nan,
          "value_hits": (value.sum((1, 3)) / n).tolist(),
          "key_hits": (key.sum((1, 3)) / n).tolist(),
          "table": [recall_table(v, queries, correct).tolist() for v in value],
          "by_distance": accuracy_by_distance(distances, queries, correct, edges)}


def _out_kernel_layer(path):
  """The layer of an attention `out` kernel's parameter path, else None."""
  names = [str(getattr(p, "key", "")) for p in path]
  if names[-3:] == ["attention", "out", "kernel"] and len(names) >= 4:
    match = _BLOCK.match(names[-4])
    return int(match.group(1)) if match else None
  return None


def num_layers_and_heads(params):
  """(layers, heads) of the model, from its attention out kernels [H, D, d_model]."""
  heads = {_out_kernel_layer(path): leaf.shape[0]
           for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  heads.pop(None, None)
  return len(heads), (max(heads.values()) if heads else 0)


def without_head(params, layer, head):
  """The parameters with head `head` of layer `layer` removed: its slice of the
  attention's out kernel zeroed, so its output no longer reaches the stream."""
  layers, heads = num_layers_and_heads(params)
  if not 0 <= layer < layers:
    raise ValueError(f"`layer` must be in [0, {layers}): the model has no layer {layer}")
  if not 0 <= head < heads:
    raise ValueError(f"`head` must be in [0, {heads}), got {head}")
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf.at[head].set(0.0) if _out_kernel_layer(path) == layer else leaf,
      params)


def eval_loss(run, params, batches):
  """The mean cross-entropy over the real targets of `batches`."""
  total, count = 0.0, 0.0
  for batch in batches:
    logits = _apply(run, params, batch)
    sums = train.loss_and_metrics(logits, {k: jnp.asarray(v) for k, v in batch.items()},
                                  run.kind)
    total += float(sums["loss"])
    count += float(sums["count"])
  return total / max(count, 1.0)


def head_ablation(run, batches):
  """(loss with every head, float [layers, H]: loss without each head minus it)."""
  batches = list(batches)
  base = eval_loss(run, run.params, batches)
  layers, heads = num_layers_and_heads(run.params)
  delta = np.zeros((layers, heads))
  for layer, head in itertools.product(range(layers), range(heads)):
    delta[layer, head] = eval_loss(run, without_head(run.params, layer, head), batches) - base
  return base, delta


def plot_maps(weights, batch, path, *, num_examples=2, title=""):
  """One PNG: a row per example, a column per head, each the weights over real tokens."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  rows = query_rows(weights, batch)
  examples = [i for i in range(weights.shape[0]) if rows[i].any()][:num_examples]
  heads = weights.shape[1]
  fig = Figure(figsize=(2.2 * heads, 2.2 * max(len(examples), 1) + 0.4), dpi=100)
  axes = np.asarray(fig.subplots(max(len(examples), 1), heads, squeeze=False))
  for r, i in enumerate(examples):
    keys = np.flatnonzero(rows[i])
    for h in range(heads):
      ax = axes[r, h]
      ax.imshow(weights[i, h][np.ix_(keys, keys)], cmap="viridis", vmin=0.0,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(f"head {h}", fontsize=9)
      if h == 0:
        ax.set_ylabel(f"example {i}\nquery", fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  with storage.path(path).open("wb") as f:
    fig.savefig(f, format="png")


def report(run, batches, out_dir, *, num_examples=2, edges=None):
  """Writes maps_layer<l>.png, heads.md (recall.md for MQAR) and heads.json into out_dir;
  returns heads.md's text. edges: the upper edges of MQAR's distance bins (default: the
  run's own, distance_edges)."""
  from attention_research import tabulate  # pylint: disable=g-import-not-at-top
  batches = list(batches)
  first = batches[0]
  weights = attention_weights(run, run.params, first)
  entropy = head_entropy(weights, first)
  divergence = head_divergence(weights, first)
  base, delta = head_ablation(run, batches)
  storage.path(out_dir).mkdir(parents=True, exist_ok=True)
  for layer, w in enumerate(weights):
    plot_maps(w, first, os.path.join(out_dir, f"maps_layer{layer}.png"),
              num_examples=num_examples,
              title=f"layer {layer}: attention weights (rows: queries, columns: keys)")
  heads = entropy.shape[1]
  nearest = [[float(min(divergence[l, h, o] for o in range(heads) if o != h))
              if heads > 1 else math.nan for h in range(heads)] for l in range(len(weights))]
  rows = [[l, h, entropy[l, h], nearest[l][h], delta[l, h]]
          for l in range(len(weights)) for h in range(heads)]
  header = ["layer", "head", "entropy (bits)", "JS to nearest head (bits)",
            "loss without it - loss"]
  text = (f"Step {run.step} of a {run.config.model} with {run.config.attention} attention on "
          f"{run.config.task}; eval loss {base:.4f} over {len(batches)} batches; entropy and "
          f"divergence over the first batch's real query rows.\n\n"
          + tabulate.markdown_table(header, rows) + "\n")
  storage.write_text(os.path.join(out_dir, "heads.md"), text)
  stats = {"step": run.step, "eval_loss": base, "entropy_bits": entropy.tolist(),
           "js_divergence_bits": divergence.tolist(), "ablation_delta_loss": delta.tolist()}
  if run.config.task == "mqar":
    recall = recall_report(run, batches, edges)
    rows = [[l, h, *r] for l, table in enumerate(recall["table"]) for h, r in enumerate(table)]
    header = ["layer", "head", "top key is the value", "accuracy if so", "n",
              "accuracy if not", "n"]
    storage.write_text(os.path.join(out_dir, "recall.md"), (
        f"MQAR: {recall['num_queries']} queries over {len(batches)} batches, accuracy "
        f"{recall['accuracy']:.4f}. Per head: how often its most-attended position is the "
        f"queried key's value in the context, and the model's accuracy on those queries "
        f"and on the others.\n\n" + tabulate.markdown_table(header, rows) + "\n\n"
        f"By how far back the value stands from its query:\n\n"
        + tabulate.markdown_table(["distance", "queries", "share", "accuracy"],
                                  recall["by_distance"]) + "\n"))
    stats["recall"] = recall
  storage.write_json(os.path.join(out_dir, "heads.json"), stats, indent=1)
  return text


def summary_values(stats):
  """{column: number} of one run's heads.json stats, for a sweep's summary: eval loss,
  heads' mean entropy, mean and least JS divergence to the nearest head (near 0:
  duplicates), the largest ablation loss and how many heads cost under 0.01 nats; for
  MQAR the accuracy, each distance bin's share and accuracy, and the head whose top key
  is most often the value: that rate and the accuracy when it hits and when it misses."""
  js = np.asarray(stats["js_divergence_bits"], dtype=np.float64)
  heads = js.shape[-1]
  nearest = (np.where(np.eye(heads, dtype=bool), np.inf, js).min(-1) if heads > 1
             else np.full(js.shape[:-1], np.nan))
  delta = np.asarray(stats["ablation_delta_loss"], dtype=np.float64)
  out = {"eval loss": stats["eval_loss"],
         "entropy (bits)": float(np.mean(stats["entropy_bits"])),
         "JS to nearest head": float(np.mean(nearest)),
         "least JS to nearest head": float(np.min(nearest)),
         "largest loss without a head": float(delta.max()),
         "heads costing < 0.01": int((delta < 0.01).sum())}
  recall = stats.get("recall")
  if recall:
    out["accuracy"] = recall["accuracy"]
    for label, _, share, accuracy in recall["by_distance"]:
      out[f"share {label} back"] = share
      out[f"accuracy {label} back"] = accuracy
    table = np.asarray(recall["table"], dtype=np.float64)   # [layers, H, 5]
    layer, head = np.unravel_index(np.argmax(table[..., 0]), table.shape[:2])
    out["best head"] = f"L{layer}H{head}"
    out["its top key is the value"] = table[layer, head, 0]
    out["accuracy if so"] = table[layer, head, 1]
    out["accuracy if not"] = table[layer, head, 3]
  return out


def summarize(groups):
  """Markdown: a row per setting ({label: [summary_values of each seed's run]}), each
  numeric column the mean ± the half-width of its 95% interval over the runs (n=k);
  a text column (the best head, L<layer>H<head>) lists each run's."""
  from attention_research import tabulate  # pylint: disable=g-import-not-at-top
  from attention_research.sweep import tables  # pylint: disable=g-import-not-at-top
  columns = list(dict.fromkeys(c for runs in groups.values() for v in runs for c in v))
  rows = []
  for label, runs in groups.items():
    row = [label, len(runs)]
    for column in columns:
      values = [v[column] for v in runs if column in v]
      if not values:
        row.append("")
      elif isinstance(values[0], str):
        row.append(", ".join(values))
      else:
        finite = [float(x) for x in values if not math.isnan(float(x))]
        if not finite:
          row.append("n/a")
          continue
        mean, half = tables.interval(finite)
        text = f"{mean:.3g}" if half is None else f"{mean:.3g} ± {half:.2g}"
        row.append(text if len(finite) == len(runs) else f"{text} (n={len(finite)})")
    rows.append(row)
  return tabulate.markdown_table(["setting", "runs", *columns], rows)


def inspect_sweep(workdir, out_dir, *, num_batches=4, batch_size=8, num_examples=2,
                  edges=None, data_dir=None):
  """Reports every completed trial of the sweep in `workdir` that has attention weights
  into out_dir/<trial id>/, then writes out_dir/summary.md (summarize, a row per
  setting: the trial's overrides but its seed) and returns its text; the trials left
  out are named with why."""
  from attention_research.sweep import grid  # pylint: disable=g-import-not-at-top
  from attention_research.sweep import runner  # pylint: disable=g-import-not-at-top
  sweep = storage.read_json(os.path.join(workdir, "sweep.json"))
  by_id, skipped = {}, {}   # skipped: {why: [trial names]}
  for trial in sweep["trials"]:
    trial_dir = runner.trial_dir(workdir, trial["id"])
    result = runner.read_result(workdir, trial["id"])
    status = result["status"] if result else "not run"
    if status != "completed":
      skipped.setdefault(status, []).append(trial["name"])
      continue
    try:
      run = load(trial_dir, data_dir=data_dir)
    except ValueError as e:  # linear and Performer have no weights
      skipped.setdefault(str(e), []).append(trial["name"])
      continue
    trial_out = os.path.join(out_dir, trial["id"])
    report(run, first_batches(run, num_batches, batch_size=batch_size), trial_out,
           num_examples=num_examples, edges=edges)
    setting = {k: v for k, v in trial["overrides"].items() if k != "seed"}
    by_id.setdefault(grid.trial_id(setting), (grid.trial_name(setting), []))[1].append(
        summary_values(storage.read_json(os.path.join(trial_out, "heads.json"))))
  # Grouped by id, labelled by name; a name shows dict values as {…}, so two settings
  # that differ only inside one (two windows, say) get their ids to tell them apart.
  counts = collections.Counter(name for name, _ in by_id.values())
  groups = {(name if counts[name] == 1 else f"{name} [{sid}]"): runs
            for sid, (name, runs) in by_id.items()}
  text = (f"Inspection of {sum(map(len, groups.values()))} trials of {workdir}, per setting "
          f"over its seeds (each trial's tables in <trial id>/).\n\n"
          + (summarize(groups) if groups else "No trial to inspect.") + "\n")
  for why, names in skipped.items():
    text += f"\nLeft out ({why}): {'; '.join(names)}\n"
  storage.write_text(os.path.join(out_dir, "summary.md"), text)
  return text
