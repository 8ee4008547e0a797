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

A data_dir on Cloud Storage (gs://) is mirrored: array_record's reader opens
local files only, so each host reads a copy under its local mirror directory
($ATTENTION_RESEARCH_MIRROR, default ~/.cache/attention_research/mirror, then
the bucket and path). The bucket holds the data every host shares: the first
process to claim a dataset there generates it locally and uploads it (its
dataset_info.json last, as the mark that it is whole); every other host
waits for that mark and downloads the dataset instead of generating it.
"""

import os
import time
import uuid

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
MIRROR_ENV = "ATTENTION_RESEARCH_MIRROR"
_DONE = "dataset_info.json"  # TFDS writes it last; uploaded last, it marks a whole copy


def mirror_dir(data_dir):
  """The local directory that holds this host's copy of the remote `data_dir`."""
  root = os.environ.get(MIRROR_ENV) or os.path.join("~", ".cache", "attention_research", "mirror")
  scheme, _, rest = os.fspath(data_dir).partition("://")
  return os.path.join(os.path.expanduser(root), scheme, *rest.strip("/").split("/"))


def builder(name, options, data_dir) -> tfds.core.DatasetBuilder:
  """The task's TFDS builder for these options, without preparing it: ours for a
  generated task, the source dataset's for a task read from TFDS.

  data_dir None means TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets);
  a gs:// data_dir, this host's mirror of it (see the module docstring).
  """
  task = registry.get_task(name)
  resolved = registry.resolve_options(name, options)
  data_dir = None if data_dir is None else os.fspath(data_dir)
  if data_dir is not None and not storage.is_local(data_dir):
    data_dir = mirror_dir(data_dir)
  if task.source is not None:
    return tfds.builder(task.source, data_dir=data_dir, file_format="array_record")
  config = common.make_config(task.config, resolved)
  return task.builder(config=config, data_dir=data_dir, file_format="array_record")


def _is_prepared(version_dir):
  return (storage.path(version_dir) / _DONE).exists()


def prepare(name, options, data_dir,
            stale_after_s=STALE_AFTER_S) -> tfds.core.GeneratorBasedBuilder:
  """The prepared TFDS builder; the data is generated into data_dir on first use.

  Generation is deterministic, so on many hosts each may prepare its own
  local copy; on a shared data_dir one process generates and the others
  wait for it (see the module docstring).
  """
  b = builder(name, options, data_dir)
  local = os.fspath(b.data_path)
  task = registry.get_task(name)
  if task.source is not None:
    return _read_only(name, options, b, data_dir, stale_after_s)
  generate = lambda: _generate(b, task, manual_dir(data_dir))
  if data_dir is None or storage.is_local(data_dir):
    _once(local, generate, stale_after_s)
  elif not _is_prepared(local):
    remote = storage.path(data_dir) / os.path.relpath(local, mirror_dir(data_dir))
    _once(os.fspath(remote), lambda: _generate_and_upload(b, generate, remote, stale_after_s),
          stale_after_s)
    _once(local, lambda: _download(remote, local), stale_after_s)
  # A fresh builder reads the dataset's info from what was written.
  return builder(name, options, data_dir)


def _read_only(name, options, b, data_dir, stale_after_s):
  """The prepared source dataset of a task read from TFDS (a gs:// data_dir's
  downloaded to the mirror first), or a ValueError saying how to prepare it."""
  local = os.fspath(b.data_path)
  where = b.data_path
  if data_dir is not None and not storage.is_local(data_dir) and not _is_prepared(local):
    where = storage.path(data_dir) / os.path.relpath(local, mirror_dir(data_dir))
    if _is_prepared(where):
      _once(local, lambda: _download(where, local), stale_after_s)
  source = registry.get_task(name).source
  dataset = source.split("/")[0].split(":")[0]
  build = (f"tfds build {dataset} --file_format=array_record "
           f"--data_dir={data_dir or '~/tensorflow_datasets'}")
  if not _is_prepared(local):
    raise ValueError(f"task {name!r} reads the TFDS dataset {source!r}, which is not in "
                     f"{where}; nothing is downloaded at run time: on a machine with network "
                     f"run `{build}` and copy that data_dir here")
  fresh = builder(name, options, data_dir)  # reads the dataset's info from its files
  if fresh.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise ValueError(f"task {name!r}: the TFDS dataset {source!r} in {local} is stored as "
                     f"{fresh.info.file_format.value}; this reads array_record (random "
                     f"access, no TensorFlow): run `{build}`")
  return fresh


def _once(version_dir, make, stale_after_s):
  """Runs make() to fill `version_dir` unless it is prepared, in one process of those
  sharing it (the claim `<version_dir>.lock`); the others wait until it is prepared."""
  lock = version_dir.rstrip("/") + ".lock"
  waiting_since = None
  while not _is_prepared(version_dir):
    with claims.held(lock, stale_after_s) as token:
      if token is not None:
        if not _is_prepared(version_dir):  # another process may have finished since we looked
          make()
        return
    if waiting_since is None:
      waiting_since = time.time()
      holder = claims.holder(lock, stale_after_s) or {}
      logging.info("waiting for host %s, pid %s to prepare %s (its lock: %s)",
                   holder.get("host"), holder.get("pid"), version_dir, lock)
    time.sleep(POLL_S)


def manual_dir(data_dir):
  """Where a task built from downloaded files finds them: TFDS's manual
  directory, `<data_dir>/downloads/manual` (a gs:// one is read as it is)."""
  root = os.fspath(data_dir) if data_dir else os.environ.get("TFDS_DATA_DIR",
                                                             "~/tensorflow_datasets")
  root = root if "://" in root else os.path.expanduser(root)
  return os.path.join(root, "downloads", "manual")


def _generate(b, task, manual):
  if task.check_manual is not None:
    task.check_manual(manual)  # before TFDS's own, less helpful, assertion
  # Nothing is downloaded; try_download_gcs=False keeps TFDS off the network.
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, manual_dir=manual))


def _generate_and_upload(b, generate, remote, stale_after_s):
  """Generates the dataset into this host's mirror (unless it is there) and uploads it."""
  _once(os.fspath(b.data_path), generate, stale_after_s)
  logging.info("uploading %s to %s", b.data_path, remote)
  storage.copy_files(b.data_path, remote, last=_DONE)


def _download(remote, local):
  """Copies the remote dataset into a fresh directory beside `local`, renamed into place
  whole: a reader never sees part of it."""
  logging.info("downloading %s to %s", remote, local)
  incoming = f"{local.rstrip('/')}.incoming-{uuid.uuid4().hex}"
  storage.copy_files(remote, incoming, last=_DONE)
  os.rename(incoming, local)
