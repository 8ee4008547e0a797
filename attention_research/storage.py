"""The path layer: every file the trainer, the sweep runner and the tables read or write.

    p = storage.path("gs://bucket/run") / "result.json"   # or a local path
    storage.write_json(p, result)          # whole or not at all, on either
    version = storage.create(p, data)      # create-if-absent: None if it existed

Paths are `etils.epath.Path`s (what orbax and TFDS use), so `gs://` works
wherever a local directory does; epath sends it to fsspec's gcsfs when
TensorFlow is absent (setup.py's `gcs` extra, which the tests also install).

What differs between POSIX and an object store, and how:
  - a whole-file write: POSIX writes a temporary file and renames it; one
    upload to an object store is already atomic;
  - appending (metrics.jsonl): objects cannot be appended to, so the appender
    keeps the file's text and uploads it whole at every flush. One process
    writes each such file and it stays small (a line per log), so a rewrite
    is cheaper than one object per line, and readers still see one file;
  - the claims' conditional operations (create-if-absent, refresh-if-unchanged,
    remove-if-unchanged; see claims.py): POSIX uses hard links, O_EXCL and
    renames; GCS uses generation preconditions (`ifGenerationMatch`, 0: "does
    not exist"), sent through gcsfs's request method, since fsspec has no
    conditional writes. A `version` is what the condition compares: the
    object's generation on GCS, the file's bytes on POSIX (they hold a unique
    token; see claims.py).
"""

import contextlib
import datetime
import importlib.util
import json
import os
import shutil
import urllib.parse
import uuid

from etils import epath
import fsspec

# gcsfs caches directory listings and never expires them by default: a sweep
# would not see the trials other hosts finish. Listings here are few and small.
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)


def path(p):
  """`p` (a str or path; `~` expanded where local) as an epath.Path."""
  text = os.fspath(p)
  if text.startswith(("gs://", "gcs://")) and importlib.util.find_spec("gcsfs") is None:
    raise ImportError(f"{text}: gs:// paths need gcsfs: pip install -e '.[gcs]'")
  return epath.Path(text if "://" in text else os.path.expanduser(text))


def is_local(p):
  """Whether `p` is on a local (POSIX) filesystem, not an object store."""
  return "://" not in os.fspath(p)


def absolute(p):
  """A local path made absolute (orbax wants one); a URL as it is (abspath would cut gs://)."""
  return os.path.abspath(path(p)) if is_local(p) else os.fspath(p)


def write_text(p, text):
  """Writes `text` to `p` whole: a reader sees the old contents or the new, never part."""
  p = path(p)
  if not is_local(p):
    p.write_text(text)  # one upload: atomic
    return
  # Unique (hosts sharing a directory may share a pid), a dot file (listings skip them).
  tmp = p.parent / f".{p.name}.tmp-{uuid.uuid4().hex}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, p)


def write_json(p, obj, **dump_args):
  write_text(p, json.dumps(obj, **dump_args))


def read_json(p):
  """The JSON at `p`; FileNotFoundError if there is none."""
  return json.loads(path(p).read_text())


def listdir(p):
  """The names in directory `p`; [] if there is none (an object store has no empty ones)."""
  p = path(p)
  try:
    return [child.name for child in p.iterdir()]
  except (FileNotFoundError, NotADirectoryError):
    return []


def move(source, target):
  """Moves the file or directory `source` to `target` (a new name). On an object store
  that is a copy and a delete of every object under it: not atomic, so callers order
  their moves to survive a kill midway."""
  if is_local(source):
    os.rename(source, target)
  else:
    _gcs().mv(os.fspath(source), os.fspath(target), recursive=True)


def copy_files(source, target, last=None):
  """Copies the files under directory `source` into directory `target`, either of them
  local or on an object store; the file named `last` (directly under `source`) after
  every other, so a reader that waits for it finds the rest whole."""
  source, target = path(source), path(target)
  for name in sorted(listdir(source), key=lambda n: n == last):
    if (source / name).is_dir():
      copy_files(source / name, target / name)
      continue
    if is_local(target):
      os.makedirs(target, exist_ok=True)
    with (source / name).open("rb") as f, (target / name).open("wb") as g:
      shutil.copyfileobj(f, g, 1 << 22)


class _Appender:
  """A line-appending file on an object store: the text so far, uploaded whole at each flush."""

  def __init__(self, p):
    self._path = p
    self._text = p.read_text() if p.exists() else ""

  def write(self, text):
    self._text += text

  def flush(self):
    self._path.write_text(self._text)

  def close(self):
    self.flush()


def open_append(p):
  """A file object to append lines to `p` (write, flush, close); see the module docstring."""
  p = path(p)
  return open(p, "a") if is_local(p) else _Appender(p)


# ------------------------------------------------------------ conditional operations

def read_versioned(p):
  """(bytes, mtime in seconds since the epoch, version) of the file at `p`, or None."""
  return _ops(p)["read"](os.fspath(p))


def create(p, data):
  """The version of the file at `p` if this call created it with `data`; None if it existed."""
  return _ops(p)["create"](os.fspath(p), data)


def refresh_if(p, version):
  """Marks the file at `p` as written now (its mtime), if it is still `version`; its new
  version, or None if it changed or is gone."""
  return _ops(p)["refresh"](os.fspath(p), version)


def remove_if(p, version):
  """Removes the file at `p` if it is still `version`; False if it changed or is gone."""
  return _ops(p)["remove"](os.fspath(p), version)


def _ops(p):
  scheme = "local" if is_local(p) else os.fspath(p).split("://", 1)[0]
  if scheme not in _OPS:
    raise ValueError(f"path {os.fspath(p)!r}: conditional writes (claims) support local paths "
                     f"and {sorted(set(_OPS) - {'local'})} URLs, not {scheme}://")
  return _OPS[scheme]


# POSIX: the version is the contents.

def _local_read(p):
  try:
    mtime = os.stat(p).st_mtime
    with open(p, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    return None
  return data, mtime, data


def _local_create(p, data):
  """Written whole under a temporary name and hard-linked into place (a link never replaces
  an existing file: one creator wins). Where the filesystem has no hard links (FAT, some
  FUSE mounts), O_EXCL creates it and then writes it, leaving a moment where it is empty."""
  tmp = f"{p}.new-{uuid.uuid4().hex}"
  with open(tmp, "wb") as f:
    f.write(data)
  try:
    os.link(tmp, p)
  except FileExistsError:
    return None
  except OSError:  # no hard links here
    return _local_create_exclusive(p, data)
  finally:
    os.remove(tmp)
  return data


def _local_create_exclusive(p, data):
  try:
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return None
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  return data


def _local_refresh(p, version):
  found = _local_read(p)
  if found is None or found[0] != version:
    return None
  os.utime(p)
  return version


def _local_remove(p, version):
  """Renamed to a unique name first: of several processes removing it only one rename
  succeeds. If what moved is another file (one replaced it since `version` was read), it
  is linked back: a link never replaces a file created meanwhile."""
  aside = f"{p}.stale-{uuid.uuid4().hex}"
  try:
    os.rename(p, aside)
  except FileNotFoundError:
    return False
  moved = _local_read(aside)
  if moved is not None and moved[0] != version:
    with contextlib.suppress(FileExistsError):
      os.link(aside, p)
    os.remove(aside)
    return False
  os.remove(aside)
  return True


# GCS: the version is the object's generation, the conditions its preconditions.

def _gcs():
  return fsspec.filesystem("gcs")


def _bucket_key(p):
  bucket, _, key = p.split("://", 1)[1].partition("/")
  return bucket, key


def _base(fs):
  """The JSON API's address: GCS's, or STORAGE_EMULATOR_HOST's (gcsfs reads it)."""
  return fs._location  # pylint: disable=protected-access


def _object_url(fs, p):
  bucket, key = _bucket_key(p)
  return f"{_base(fs)}/storage/v1/b/{bucket}/o/{urllib.parse.quote(key, safe='')}"


def _gs_read(p):
  fs = _gcs()
  for _ in range(4):  # it may be replaced between the two requests
    try:
      meta = fs.call("GET", _object_url(fs, p), json_out=True)
    except FileNotFoundError:
      return None
    try:
      _, data = fs.call("GET", _object_url(fs, p), alt="media", generation=meta["generation"])
    except FileNotFoundError:  # that generation is gone: read the new one
      continue
    updated = datetime.datetime.fromisoformat(meta["updated"]).timestamp()
    return data, updated, int(meta["generation"])
  return None


def _gs_upload(p, data, generation):
  """The new generation of the object at `p` holding `data`, uploaded only if its
  generation is `generation` (0: it does not exist); None if it is not."""
  fs = _gcs()
  bucket, key = _bucket_key(p)
  try:
    out = fs.call("POST", f"{_base(fs)}/upload/storage/v1/b/{bucket}/o",
                  uploadType="media", name=key, ifGenerationMatch=str(generation), data=data,
                  headers={"Content-Type": "application/octet-stream"}, json_out=True)
  except FileExistsError:  # 412 Precondition Failed
    return None
  finally:
    fs.invalidate_cache(p)
  return int(out["generation"])


def _gs_create(p, data):
  version = _gs_upload(p, data, 0)
  if version is None:
    # A retried upload whose first try succeeded fails its own precondition:
    # ours if it holds our bytes (claims hold a unique token).
    found = _gs_read(p)
    if found is not None and found[0] == data:
      return found[2]
  return version


def _gs_refresh(p, version):
  found = _gs_read(p)
  if found is None or found[2] != version:
    return None
  return _gs_upload(p, found[0], version)


def _gs_remove(p, version):
  fs = _gcs()
  try:
    fs.call("DELETE", _object_url(fs, p), ifGenerationMatch=str(version))
  except (FileNotFoundError, FileExistsError):  # gone, or 412: another generation now
    return False
  finally:
    fs.invalidate_cache(p)
  return True


_OPS = {
    "local": {"read": _local_read, "create": _local_create, "refresh": _local_refresh,
              "remove": _local_remove},
    "gs": {"read": _gs_read, "create": _gs_create, "refresh": _gs_refresh,
           "remove": _gs_remove},
}
_OPS["gcs"] = _OPS["gs"]  # fsspec's other name for it
