"""What the experiment binaries share: the --config flag, quiet logs, one-line errors.

Binaries run from the repository root (`python -m experiments.<name>`), where
`configs/` is importable.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from configs import common

# Libraries whose INFO lines repeat per call (orbax's per-save chatter); their
# warnings and errors still show.
_QUIET_LIBRARIES = ("orbax", "tensorflow_datasets")
# TFDS warns on every builder it opens with a config of ours; every task's
# config is custom by design (its name spells out its options).
_EXPECTED_WARNINGS = ("Using custom data configuration",)


def define_config_flag(help_text):
  """--config=<file>[:args] plus --config.<field>=<value> overrides.

  New keys are accepted so a nested option can be set one by one
  (`--config.attention_options.window=32`); `checked_config` then refuses a
  top-level field the base config does not have.
  """
  return config_flags.DEFINE_config_file("config", None, help_text, lock_config=False,
                                         accept_new_attributes=True)


def checked_config(config_holder):
  """The parsed config; an unknown field exits with one line naming it."""
  config = config_holder.value
  try:
    common.check_fields(config)
  except ValueError as e:
    exit_with(e)
  return config


def override_values():
  """{field path: value} of the --config.<field> overrides."""
  return config_flags.get_override_values(flags.FLAGS["config"])


def config_path():
  """The config file --config names, without its ':args'."""
  return config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]


def config_arg():
  """The ':args' of the config file --config names ('' if none), e.g. 'scale=cpu,seeds=3'."""
  return config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")[2]


def exit_with(error):
  """Exits with status 1 and the error on one line: a config mistake is not a crash."""
  sys.exit(f"error: {error}")


def _quiet(record):
  """False for a record the logs are better without."""
  if not any(f"{os.sep}{name}" in record.pathname for name in _QUIET_LIBRARIES):
    return True
  if record.levelno < std_logging.WARNING:
    return False
  return not str(record.msg).startswith(_EXPECTED_WARNINGS)


def define_distributed_flags(what_runs):
  """--distributed and, where the environment does not say, where the peers are."""
  return (
      flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first: one "
                        f"process per host of a TPU pod slice or multi-host GPU job, {what_runs}."),
      flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of "
                          "process 0; unset: found from the environment (TPU VMs, Slurm, ...)."),
      flags.DEFINE_integer("num_processes", None, "With --distributed: processes in all "
                           "(unset: from the environment)."),
      flags.DEFINE_integer("process_id", None, "With --distributed: this process's index "
                           "(unset: from the environment)."))


def setup(cache_dir, distributed=None):
  """Quiet logs, jax.distributed (before anything touches devices), the compile cache.

  `distributed`: the flags of define_distributed_flags, or None.
  """
  logging.get_absl_handler().addFilter(_quiet)
  if distributed is not None and not distributed[0].value:
    stray = [f"--{f.name}" for f in distributed[1:] if f.value is not None]
    if stray:
      raise app.UsageError(f"{', '.join(stray)}: used only with --distributed")
  if distributed is not None and distributed[0].value:
    jax.distributed.initialize(coordinator_address=distributed[1].value,
                               num_processes=distributed[2].value,
                               process_id=distributed[3].value)
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
