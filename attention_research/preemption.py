"""Pre-emption: SIGTERM and SIGINT ask training to save and stop at a step all processes agree on.

    with preemption.watch():
      if preemption.requested(synced=True, step=first_step):  # noted while setting up
        ...
      for step in ...:
        ...                                  # one training step
        if preemption.requested(synced=is_log_step, step=step):
          ...                                # save a checkpoint of `step`, record "preempted"
          break

A Cloud TPU VM or a spot GPU VM gets SIGTERM some seconds before it is
reclaimed; Ctrl-C sends SIGINT. The first of either is noted and the current
step finishes; the trainer then saves it and exits with EXIT_CODE. A second
SIGINT raises KeyboardInterrupt at once: the person at the keyboard means it.
`watch()` may nest (the sweep binary watches across trials, the trainer
within one): a signal noted anywhere inside the outermost one stays noted.

On one process the note is read after every step. On many (jax.distributed)
the processes must save the same step: SIGTERM goes to JAX's pre-emption
service, which picks a step every process reaches
(multihost_utils.reached_preemption_sync_point, asked with the training step
at every step, as the service requires and as orbax's CheckpointManager asks
it too: the two must use the same step ids), and SIGINT, which reaches only
the processes of one terminal, is agreed on at calls that already wait for
the devices (`synced`: the trainer's log steps), where one allgather more
costs nothing. Between a sweep's trials (no step) only the local notes are
agreed on; a SIGTERM that JAX's service takes there stops the next trial at
the step the service picks.
"""

import contextlib
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

# sysexits.h's EX_TEMPFAIL: "a temporary failure; the user is invited to retry".
EXIT_CODE = 75

_NOTED = []  # signals received inside the outermost watch(), this process
_AGREED = []  # once every process has agreed to stop, they stay stopped
_DEPTH = [0]


def _handler(signum, frame):
  del frame
  if _NOTED and signum == signal.SIGINT:
    raise KeyboardInterrupt("a second SIGINT: stopping without a checkpoint")
  _NOTED.append(signum)
  logging.warning("received %s: saving a checkpoint after this step, then stopping",
                  signal.Signals(signum).name)


def _jax_service():
  """Whether JAX's pre-emption service runs here (it does on many processes, unless off)."""
  return jax.process_count() > 1 and bool(getattr(jax.config, "jax_enable_preemption_service",
                                                  False))


@contextlib.contextmanager
def watch():
  """While inside, SIGTERM and SIGINT are noted (see requested()), not fatal."""
  outermost = _DEPTH[0] == 0
  # JAX's service has its own SIGTERM handler; replacing it would blind the others.
  signums = (signal.SIGINT,) if _jax_service() else (signal.SIGINT, signal.SIGTERM)
  previous = {}
  if outermost:
    if threading.current_thread() is threading.main_thread():
      previous = {s: signal.signal(s, _handler) for s in signums}
    else:  # Python delivers signals to the main thread only
      logging.warning("training outside the main thread: SIGTERM and SIGINT are not caught, "
                      "so pre-emption loses the steps since the last checkpoint")
  _DEPTH[0] += 1
  try:
    yield
  finally:
    _DEPTH[0] -= 1
    for s, h in previous.items():
      signal.signal(s, h)
    if outermost:  # what was noted here is spent: a later run starts afresh
      _NOTED.clear()
      _AGREED.clear()


def requested(synced, step=None):
  """Whether to stop now, the same answer on every process (see the module docstring).

  `step`: the training step just finished (None between trials).

  Once True, True until the outermost watch() ends: the sweep runner asks
  again after a trial the trainer stopped.
  """
  if not _AGREED and _agree(synced, step):
    _AGREED.append(True)
  return bool(_AGREED)


def _agree(synced, step):
  if jax.process_count() == 1:
    return bool(_NOTED)
  if (step is not None and _jax_service()
      and multihost_utils.reached_preemption_sync_point(step)):
    return True
  if synced:  # every process's own note, agreed on where a wait costs nothing
    return bool(multihost_utils.process_allgather(np.int32(bool(_NOTED))).any())
  return False
