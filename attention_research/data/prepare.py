"""Preparing a task: its TFDS builder for a set of options, generated on first use.

Data is generated into `data_dir` under a config name that spells out every
option, so two option sets never share a directory.

Processes sharing a data_dir (two trainings, two copies of a sweep, the
trials of a sweep on several hosts) generate each dataset once: generation
runs under a claim on the dataset's directory (`<version dir>.lock`, see
claims.py: created atomically, with its holder's host and pid, taken over
when that process is gone), and a process that finds the claim held waits
until the data is there. TFDS alone is not enough: it writes into a
temporary directory and renames it, and the loser of two renames fails.
"""

import os
import time

from absl import logging
import tensorflow_datasets as tfds

from attention_research import claims
from attention_research import storage
from attention_research.data import common
from attention_research.data import registry

# How often a process waiting for another's generation looks again, and how
# old another machine's unrefreshed lock must be to count as abandoned.
POLL_S = 0.5
STALE_AFTER_S = claims.STALE_AFTER_S


def builder(name, options, data_dir) -> tfds.core.GeneratorBasedBuilder:
  """The task's TFDS builder for these options, without preparing it.

  data_dir None means TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  """
  task = registry.get_task(name)
  config = common.make_config(task.config, registry.resolve_options(name, options))
  data_dir = None if data_dir is None else os.fspath(data_dir)
  if data_dir is not None and not storage.is_local(data_dir):
    # array_record's C++ writer and reader open local files only (gs:// needs TensorFlow).
    raise ValueError(f"data_dir={data_dir!r}: allowed: a local directory (each host may "
                     f"generate its own copy: generation is deterministic), not a URL")
  return task.builder(config=config, data_dir=data_dir, file_format="array_record")


def _is_prepared(b):
  return (storage.path(b.data_path) / "dataset_info.json").exists()


def prepare(name, options, data_dir,
            stale_after_s=STALE_AFTER_S) -> tfds.core.GeneratorBasedBuilder:
  """The prepared TFDS builder; the data is generated into data_dir on first use.

  Generation is deterministic, so on many hosts each may prepare its own
  local copy; on a shared data_dir one process generates and the others
  wait for it (see the module docstring).
  """
  b = builder(name, options, data_dir)
  lock = os.fspath(b.data_path).rstrip("/") + ".lock"
  waiting_since = None
  while not _is_prepared(b):
    with claims.held(lock, stale_after_s) as token:
      if token is not None:
        if not _is_prepared(b):  # another process may have finished since we looked
          # Nothing is downloaded; try_download_gcs=False keeps TFDS off the network.
          b.download_and_prepare(
              download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        break
    if waiting_since is None:
      waiting_since = time.time()
      holder = claims.holder(lock, stale_after_s) or {}
      logging.info("waiting for host %s, pid %s to generate %s (its lock: %s)",
                   holder.get("host"), holder.get("pid"), b.data_path, lock)
    time.sleep(POLL_S)
  # A fresh builder reads the dataset's info from what the generating process wrote.
  return builder(name, options, data_dir)
