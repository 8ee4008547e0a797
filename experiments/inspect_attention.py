"""Looks inside a trained run's attention: per-head maps, entropy, similarity, ablation.

    python -m experiments.inspect_attention --workdir=/tmp/mqar --out_dir=/tmp/mqar/inspect

Reads the run's config.json and newest verified checkpoint (experiments.train
wrote both) and its task's eval split, and writes into --out_dir:
  maps_layer<l>.png   each head's attention weights (queries by keys) on the
                      first --num_examples examples, a row per example
  heads.md            per layer and head: entropy (bits), the Jensen-Shannon
                      divergence to the nearest other head (bits; near 0: a
                      duplicate), and the eval loss without the head minus
                      the loss with it (head ablation, over --num_batches)
  recall.md           MQAR runs only: per head, how often its most-attended
                      position is the queried key's value in the context, and
                      the model's accuracy on those queries and on the others
  heads.json          the same numbers, with every pair's divergence
and prints heads.md. The weights are the ones the model used
(attention_research/inspect.py says how each number is computed); runs of
linear or Performer attention have none, and are refused.

    python -m experiments.inspect_attention --workdir=runs/mqar_sweep

A sweep's directory (it has sweep.json) inspects each completed trial with
attention weights into --out_dir/<trial id>/ (default: the sweep's
inspect/), leaving out the others, and writes summary.md there: a row per
setting (the trial's overrides but its seed), each number the mean ± the
half-width of its 95% interval over the seeds. --distance_edges sets
recall's distance bins for every run (say, local's window and twice it), so
that the settings share columns.
"""

import os

from absl import app
from absl import flags

from attention_research import inspect
from attention_research import storage
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write (default: WORKDIR/inspect).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The data_dir (default: the run's).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 2, "Examples drawn in the maps.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Eval batches for the ablation.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Examples per eval batch.")
_EDGES = flags.DEFINE_list("distance_edges", [], "MQAR: upper edges of the distance bins "
                          "(default: each run's own, inspect.distance_edges).")
_CACHE = flags.DEFINE_string("jax_cache_dir", "~/.cache/attention_research/jax",
                             "Persistent compilation cache ('' turns it off).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup(_CACHE.value, None)
  for name, flag in (("num_examples", _NUM_EXAMPLES), ("num_batches", _NUM_BATCHES),
                     ("batch_size", _BATCH_SIZE)):
    if flag.value < 1:
      cli.exit_with(ValueError(f"--{name} must be a positive integer, got {flag.value}"))
  try:
    edges = sorted({int(e) for e in _EDGES.value}) or None
  except ValueError:
    cli.exit_with(ValueError(f"--distance_edges must be positive integers, got "
                             f"{','.join(_EDGES.value)}"))
  if edges and edges[0] < 1:
    cli.exit_with(ValueError(f"--distance_edges must be positive integers, got {edges}"))
  out_dir = _OUT_DIR.value or os.path.join(_WORKDIR.value, "inspect")
  if storage.path(os.path.join(_WORKDIR.value, "sweep.json")).exists():
    try:
      print(inspect.inspect_sweep(_WORKDIR.value, out_dir, num_batches=_NUM_BATCHES.value,
                                  batch_size=_BATCH_SIZE.value,
                                  num_examples=_NUM_EXAMPLES.value, edges=edges,
                                  data_dir=_DATA_DIR.value), end="")
    except ValueError as e:
      cli.exit_with(e)
    return
  try:
    run = inspect.load(_WORKDIR.value, data_dir=_DATA_DIR.value)
  except ValueError as e:
    cli.exit_with(e)
  batches = inspect.first_batches(run, _NUM_BATCHES.value, batch_size=_BATCH_SIZE.value)
  print(inspect.report(run, batches, out_dir, num_examples=_NUM_EXAMPLES.value, edges=edges),
        end="")


if __name__ == "__main__":
  app.run(main)
