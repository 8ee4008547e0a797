"""Trains one model on one task: the experiment binary over `train_and_evaluate`.

    python -m experiments.train --config=configs/tasks/mqar.py:scale=cpu --workdir=/tmp/mqar

Any config field can be overridden, e.g. `--config.attention=local
--config.total_steps=200`. Running the same command again resumes from the
last checkpoint in --workdir (or, if the run completed, just re-evaluates).
"""

import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from attention_research import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. "
                                          "configs/tasks/mqar.py:scale=cpu.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, result.")
_CACHE = flags.DEFINE_string("jax_cache_dir", "~/.cache/attention_research/jax",
                             "Persistent compilation cache ('' turns it off).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first: one process per host of a "
    "TPU pod slice or multi-host GPU job (it finds its peers from the environment).")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""
  return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_quiet_orbax)
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  if _CACHE.value:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_CACHE.value))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("result: %s", {k: v for k, v in result.items() if k != "traceback"})
  if result["status"] != "completed":
    raise SystemExit(f"run {result['status']}: {result.get('error', '')}")


if __name__ == "__main__":
  app.run(main)
