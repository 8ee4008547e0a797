"""Pre-emption: SIGTERM and SIGINT ask training to save and stop at a step all processes agree on.

    with preemption.watch() as requested:
      for step in ...:
        ...                                  # one training step
        if requested(step, synced=is_log_step):
          ...                                # save a checkpoint of `step`, record "preempted"
          break

A Cloud TPU VM or a spot GPU VM gets SIGTERM some seconds before it is
reclaimed; Ctrl-C sends SIGINT. The first of either is noted and the current
step finishes; the trainer then saves it and exits with EXIT_CODE. A second
SIGINT raises KeyboardInterrupt at once: the person at the keyboard means it.

On one process the note is read after every step. On many (jax.distributed)
the processes must save the same step: SIGTERM goes to JAX's pre-emption
service (multihost_utils.reached_preemption_sync_point, asked every step,
which picks a step every process reaches), and SIGINT, which reaches only
the processes of one terminal, is agreed on at steps that already wait for
the devices (`synced`: the trainer's log steps), where one allgather more
costs nothing.
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


@contextlib.contextmanager
def watch():
  """Yields requested(step, synced) -> bool while SIGTERM and SIGINT are noted, not fatal."""
  noted = []
  many = jax.process_count() > 1
  jax_service = many and _jax_service_available()

  def handler(signum, frame):
    del frame
    if noted and signum == signal.SIGINT:
      raise KeyboardInterrupt("a second SIGINT: stopping without a checkpoint")
    noted.append(signum)
    logging.warning("received %s: saving a checkpoint after this step, then stopping",
                    signal.Signals(signum).name)

  # JAX's service has its own SIGTERM handler; replacing it would blind the others.
  signums = (signal.SIGINT,) if jax_service else (signal.SIGINT, signal.SIGTERM)
  previous = {}
  if threading.current_thread() is threading.main_thread():
    previous = {s: signal.signal(s, handler) for s in signums}
  else:  # Python delivers signals to the main thread only
    logging.warning("training outside the main thread: SIGTERM and SIGINT are not caught, "
                    "so pre-emption loses the steps since the last checkpoint")

  def requested(step, synced):
    if not many:
      return bool(noted)
    if jax_service and multihost_utils.reached_preemption_sync_point(step):
      return True
    if synced:  # every process's own note, agreed on where a wait costs nothing
      return bool(multihost_utils.process_allgather(np.int32(bool(noted))).any())
    return False

  try:
    yield requested
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _jax_service_available():
  try:
    multihost_utils.reached_preemption_sync_point(0)
  except RuntimeError:  # the service is off (jax_enable_preemption_service)
    return False
  return True
