"""Claims: which process does a piece of work, decided through one file in a shared directory.

The sweep runner claims each trial (trials/<id>/claim.json); data generation
claims a dataset's directory (<version dir>.lock), so that processes sharing a
data_dir generate it once.

    with claims.held(path, timeout_s) as token:
      if token is None:  # another live process holds it
        print(claims.holder(path, timeout_s))
      else:              # ours, refreshed by a heartbeat thread, removed on exit
        ...

A claim is a JSON file (host, boot id, pid, start time, a random token)
created only if none exists: written under a temporary name and hard-linked
into place, so of several creators exactly one wins and no claim is ever
seen empty (POSIX and NFS). Its mtime is a heartbeat, refreshed every
HEARTBEAT_S while its process runs.

A claim is stale, and may be taken over, when its process is gone:
  - on this machine (same host name and boot), when its pid is not alive, or
    is this process's own pid but not a claim this process holds (a container
    restart often gives the new process the old one's pid, even pid 1). A live
    pid is trusted whatever the heartbeat's age: a suspended laptop, a
    SIGSTOPped process or a clock step leaves a live process's heartbeat old;
  - elsewhere, when its heartbeat is older than `timeout_s`: another machine's
    pids cannot be checked. A claim with no pid (killed between an O_EXCL create
    and its write, where the filesystem has no hard links) is judged the same way.
Taking over renames the stale claim aside first, so that of several processes
that judged it stale only one removes it.

On an object store (gs://; see storage.py) the same steps are conditional
requests on the claim object's generation: it is created by an upload that
requires that no object exists (generation 0), refreshed by re-uploading it
only while its generation is still ours, and removed (on release, or as stale)
only while its generation is the one that was read, so again exactly one of
several creators or removers wins. Its "updated" time is the heartbeat.
"""

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from absl import logging

from attention_research import storage

# Seconds between refreshes of a held claim, and the age at which another
# machine's unrefreshed claim counts as abandoned (a host that died or lost the
# disk): ten missed heartbeats, so a slow shared filesystem does not lose a live claim.
HEARTBEAT_S = 30
STALE_AFTER_S = 300
HOST = socket.gethostname()


def _boot_id():
  """This boot's random id (Linux), None elsewhere: pids of an earlier boot mean nothing now."""
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


BOOT_ID = _boot_id()
# Tokens of the claims this process holds now: a claim with this process's pid
# and another token is a dead process's that happened to have the same pid.
_HELD = set()


def acquire(path, timeout_s):
  """This process's token once it holds the claim at `path`, taking over a stale one;
  None while another live process holds it."""
  storage.path(path).parent.mkdir(parents=True, exist_ok=True)
  for _ in range(4):  # a claim may vanish (released, taken over) between any two calls
    token = _create(path)
    if token is not None:
      _HELD.add(token)
      return token
    found = _read(path)
    if found is None:
      continue
    claim, mtime, _ = found
    if not _is_stale(claim, mtime, timeout_s):
      return None
    if _remove(path, claim.get("token")):
      logging.warning("took over the stale claim %s of host %s, pid %s", path,
                      claim.get("host"), claim.get("pid"))
  return None


def holder(path, timeout_s):
  """The claim at `path` (a dict: host, pid, start_time, ...) if a live process holds it,
  else None. A claim caught mid-write reads as {}."""
  found = _read(path)
  if found is None or _is_stale(*found[:2], timeout_s):
    return None
  return found[0]


@contextlib.contextmanager
def held(path, timeout_s):
  """Yields this process's token while it holds the claim at `path`, a heartbeat thread
  refreshing it, and removes it on exit; yields None if another live process holds it."""
  token = acquire(path, timeout_s)
  if token is None:
    yield None
    return
  stop = threading.Event()
  beat = threading.Thread(target=_heartbeat, args=(path, token, stop), daemon=True)
  try:
    beat.start()
    yield token
  finally:
    stop.set()
    if beat.is_alive():
      beat.join()
    _release(path, token)


def _read(path):
  """(claim, mtime, version) of the claim at `path` (version: see storage.py), or None if
  there is none.

  A claim that is not JSON (cut short: created by O_EXCL and killed before its
  write) reads as {}: its mtime still dates it.
  """
  found = storage.read_versioned(path)
  if found is None:
    return None
  data, mtime, version = found
  try:
    claim = json.loads(data)
  except (json.JSONDecodeError, UnicodeDecodeError):
    return {}, mtime, version
  return (claim if isinstance(claim, dict) else {}), mtime, version


def _is_stale(claim, mtime, timeout_s):
  """Whether the claim's process is gone (see the module docstring)."""
  pid = claim.get("pid")
  here = claim.get("host") == HOST and claim.get("boot_id", BOOT_ID) == BOOT_ID
  if not here or not isinstance(pid, int) or pid <= 0:
    # Another machine's claim, or one without a pid: only its heartbeat can tell.
    return time.time() - mtime > timeout_s
  if pid == os.getpid():  # an earlier process's (a restart reused the pid), unless held here
    return claim.get("token") not in _HELD
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # alive, another user's
    pass
  return False


def _create(path):
  """A new claim's token if this process created the claim at `path`, None if one exists.

  The claim appears whole, except where a filesystem has no hard links (see
  storage.create): then it is empty for a moment (see _read).
  """
  token = uuid.uuid4().hex
  text = json.dumps({"host": HOST, "boot_id": BOOT_ID, "pid": os.getpid(),
                     "start_time": time.time(), "token": token})
  return token if storage.create(path, text.encode()) is not None else None


def _remove(path, token):
  """Removes the claim at `path` if its token is `token` (None: one without a token);
  False if it is gone or another claim replaced it.

  Only if it is still the claim read here (storage.remove_if): of several
  processes that found it stale only one removes it, and a claim created
  meanwhile stays.
  """
  found = _read(path)
  if found is None or found[0].get("token") != token:
    return False
  return storage.remove_if(path, found[2])


def _release(path, token):
  """Removes this process's claim. A failure is only logged: the claim goes stale with
  its process, and raising here would hide the error that ended the trial, if any."""
  try:
    _remove(path, token)  # if another process took it over, the heartbeat said so
  except Exception as e:  # pylint: disable=broad-except  # any client's error (OSError, HTTP)
    logging.warning("could not remove the claim %s (%s); it goes stale once this process "
                    "ends", path, e)
  _HELD.discard(token)


def _heartbeat(path, token, stop):
  """Refreshes the claim (its mtime; an object's "updated" time) every HEARTBEAT_S until
  `stop` is set or the claim is lost.

  A refresh that fails (an NFS hiccup) is tried again at the next beat: only
  many missed beats in a row make the claim look stale elsewhere.
  """
  while not stop.wait(HEARTBEAT_S):
    try:
      found = _read(path)
      if found is None or found[0].get("token") != token:
        logging.error("lost the claim %s: another process took it over as stale (was this one "
                      "stalled, or its filesystem?) and may run this trial too", path)
        return
      if storage.refresh_if(path, found[2]) is None:
        continue  # changed since it was read: the next beat says by whom
    except Exception as e:  # pylint: disable=broad-except  # any client's error (OSError, HTTP)
      logging.warning("could not refresh the claim %s (%s); trying again in %s s", path, e,
                      HEARTBEAT_S)
