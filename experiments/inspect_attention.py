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
"""

import os

from absl import app
from absl import flags

from attention_research import inspect
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write (default: WORKDIR/inspect).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The data_dir (default: the run's).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 2, "Examples drawn in the maps.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Eval batches for the ablation.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Examples per eval batch.")
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
    run = inspect.load(_WORKDIR.value, data_dir=_DATA_DIR.value)
  except ValueError as e:
    cli.exit_with(e)
  batches = inspect.eval_batches(run, batch_size=_BATCH_SIZE.value)
  batches = [b for _, b in zip(range(_NUM_BATCHES.value), batches)]
  out_dir = _OUT_DIR.value or os.path.join(_WORKDIR.value, "inspect")
  print(inspect.report(run, batches, out_dir, num_examples=_NUM_EXAMPLES.value), end="")


if __name__ == "__main__":
  app.run(main)
