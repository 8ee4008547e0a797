"""Preparing a task: its TFDS builder for a set of options, generated on first use.

Data is generated into `data_dir` under a config name that spells out every
option, so two option sets never share a directory.
"""

import os

import tensorflow_datasets as tfds

from attention_research.data import common
from attention_research.data import registry


def builder(name, options, data_dir) -> tfds.core.GeneratorBasedBuilder:
  """The task's TFDS builder for these options, without preparing it.

  data_dir None means TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  """
  task = registry.get_task(name)
  config = common.make_config(task.config, registry.resolve_options(name, options))
  data_dir = None if data_dir is None else os.fspath(data_dir)
  return task.builder(config=config, data_dir=data_dir, file_format="array_record")


def prepare(name, options, data_dir) -> tfds.core.GeneratorBasedBuilder:
  """The prepared TFDS builder; the data is generated into data_dir on first use.

  Generation is deterministic, so on many hosts each may prepare its own
  local copy; TFDS writes to a temporary directory and renames it, so hosts
  racing on a shared data_dir end with one complete copy.
  """
  b = builder(name, options, data_dir)
  # Nothing is downloaded; try_download_gcs=False keeps TFDS off the network.
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return b
