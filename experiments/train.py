"""Trains one model on one task: the experiment binary over `train_and_evaluate`.

    python -m experiments.train --config=configs/tasks/mqar.py:scale=cpu --workdir=/tmp/mqar

`--profile_steps=a,b` writes an XProf trace of train steps a to b into
--workdir, for TensorBoard's profile tab (`tensorboard --logdir=WORKDIR`).

Run it from the repository root. Any config field can be overridden, nested
options one by one: `--config.attention=local --config.attention_options.window=8
--config.total_steps=200`. Running the same command again resumes from the
last checkpoint in --workdir; a completed run keeps its result.

Signals: SIGTERM (a pre-emptible VM about to be reclaimed) or Ctrl-C finishes
the current step, checkpoints it, writes result.json with status "preempted"
and exits with code 75; the same command resumes there. A second Ctrl-C
exits at once. A refusal (a config error, a --workdir holding another
config's run) is one line on stderr and writes nothing.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax

from attention_research import preemption
from attention_research import train
from experiments import cli

_CONFIG = cli.define_config_flag("Config file, e.g. configs/tasks/mqar.py:scale=cpu.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, result.")
_CACHE = flags.DEFINE_string("jax_cache_dir", "~/.cache/attention_research/jax",
                             "Persistent compilation cache ('' turns it off).")
_DISTRIBUTED = cli.define_distributed_flags("each training its part of the run")
_PROFILE = flags.DEFINE_string("profile_steps", None,
                               "'a,b': an XProf trace of train steps a to b in --workdir "
                               "(TensorBoard's profile tab); sets config.profile_steps.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup(_CACHE.value, _DISTRIBUTED)
  config = cli.checked_config(_CONFIG)
  if _PROFILE.value is not None:
    config.profile_steps = _PROFILE.value
  try:  # a config mistake, or a workdir of another config's run: one line, nothing written
    train.validate_config(config, len(jax.devices()))
    train.check_workdir(config, _WORKDIR.value)
  except ValueError as e:
    cli.exit_with(e)
  result = train.train_and_evaluate(config, _WORKDIR.value)
  logging.info("result: %s", {k: v for k, v in result.items() if k != "traceback"})
  if result["status"] == "preempted":  # a distinct code: a job scheduler may requeue it
    print(f"run preempted: {result['error']}", file=sys.stderr)
    raise SystemExit(preemption.EXIT_CODE)
  if result["status"] != "completed":
    raise SystemExit(f"run {result['status']}: {result.get('error', '')}")


if __name__ == "__main__":
  app.run(main)
