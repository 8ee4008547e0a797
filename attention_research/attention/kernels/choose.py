"""Which implementation computes an exact variant's call: its own XLA code, or
a vendor kernel behind the same function.

    kernel = choose.kernel_for("dense", implementation, s, query.dtype, causal=causal,
                               kv_mask=kv_mask, options=dict(mask=mask, alibi_slopes=alibi_slopes))
    if kernel is not None:
      return kernel(query, key, value, kv_mask, xla=functools.partial(dense, ...))

`implementation` is one of IMPLEMENTATIONS:

  auto        per backend: Pallas splash attention on TPU; cuDNN, else the
              Pallas GPU kernel, on a CUDA GPU; the XLA code on CPU or where
              no kernel can serve the call (the reason is logged once, at
              debug level).
  xla         the variant's own pure-JAX code.
  pallas_tpu  splash attention (splash.py). Off a TPU it runs in Pallas's
              interpret mode: slowly, for tests, with one INFO line saying so.
  pallas_gpu  the Pallas (Triton) flash attention kernel (pallas_gpu.py); in
              interpret mode off a GPU, likewise.
  cudnn       cuDNN flash attention through jax.nn.dot_product_attention
              (cudnn.py); a GPU only (cuDNN has no interpreter).

An explicit kernel that cannot serve a call is a ValueError naming the variant,
the implementation, why, and the allowed values. No kernel takes a bias, so
ALiBi is always the XLA code. Each kernel module says what it serves
(`why_not`) and computes it (`attend`).

Over several devices, outside shard_map, "auto" leaves the Pallas kernels
out: jit's automatic sharding cannot split a Pallas call (it would run whole
on every device, the batch gathered to each); jax gives cuDNN's call
partitioning rules (batch and heads), so it stays. An explicit Pallas kernel
there runs, with a warning logged once. The model calls a variant through
attention.per_device (shard_map) where a kernel may serve, and inside
shard_map each device's program counts one device. Under context parallelism
ring attention's per-shard step is chosen by `ring_step` (splash or the XLA
code); the other strategies run the XLA code.
"""

import contextlib
import functools
import logging
import math
import threading
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from attention_research.attention import common
from attention_research.attention.kernels import cudnn
from attention_research.attention.kernels import pallas_gpu
from attention_research.attention.kernels import splash

IMPLEMENTATIONS = ("auto", "xla", "pallas_tpu", "pallas_gpu", "cudnn")

_KERNELS = {"pallas_tpu": splash, "pallas_gpu": pallas_gpu, "cudnn": cudnn}
_HOME = {"pallas_tpu": "tpu", "pallas_gpu": "gpu", "cudnn": "gpu"}
# What "auto" tries, in order, per backend. cuDNN before the Pallas GPU kernel:
# it is NVIDIA's tuned kernel; the Pallas one serves what cuDNN refuses (float32).
_AUTO = {"tpu": ("pallas_tpu",), "gpu": ("cudnn", "pallas_gpu")}
_PARTITIONED = ("cudnn",)  # kernels jit's automatic sharding can split (see above)

_log = logging.getLogger(__name__)
_logged = set()


class Call(NamedTuple):
  """What a kernel needs to know to say whether it can serve a call."""
  variant: str
  shapes: common.Shapes
  dtype: Any          # the query's
  causal: bool
  kv_mask: bool       # whether the call has one
  options: dict       # the variant's options that change its result (pattern, mask, bias)
  backend: str        # jax.default_backend(), or a test's stand-in


def _log_once(level, message):
  """Logs `message` the first time it is seen: a variant is traced many times."""
  if message not in _logged:
    _logged.add(message)
    _log.log(level, message)


def check_implementation(variant, implementation):
  """`implementation` if it is one of IMPLEMENTATIONS, else a ValueError naming them."""
  if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
    raise ValueError(f"{variant}: `implementation` must be one of {list(IMPLEMENTATIONS)}, "
                     f"got {implementation!r}")
  return implementation


RING = ("auto", "xla", "pallas_tpu")  # what ring attention's per-shard step takes


def check_context_implementation(variant, implementation):
  """The check of the context-parallel per-shard functions other than the ring
  (`ring_step` is its own): they run the XLA code ("auto" too)."""
  check_implementation(variant, implementation)
  if implementation not in ("auto", "xla"):
    raise ValueError(f"{variant} under context parallelism: `implementation` must be 'auto' or "
                     f"'xla' (of the strategies only ring attention runs a kernel per shard: "
                     f"splash, on TPU), got {implementation!r}")


def ring_step(variant, implementation, s, dtype, *, causal, kv_mask, options, backend=None):
  """How ring attention computes each step (blockwise.context_ring): None for the
  XLA code, else splash (splash_ring.py), with whether it runs in interpret mode.

  The ring merges the steps by their log-sum-exp, so its step is a kernel that
  returns one: splash does (auto picks it on TPU); cuDNN and the Pallas GPU
  kernel do not, and are a ValueError naming the allowed values (RING).
  `s` is one shard's call; the rest as in `kernel_for`.
  """
  check_implementation(variant, implementation)
  if implementation not in RING:
    raise ValueError(f"{variant} under ring attention: implementation={implementation!r} cannot "
                     f"serve a ring step (the ring merges its steps by their log-sum-exp, which "
                     f"only splash returns). Allowed: {list(RING)}")
  if implementation == "xla":
    return None
  call = Call(variant, s, jnp.dtype(dtype), causal, kv_mask is not None, dict(options),
              backend or jax.default_backend())
  reason = splash.why_not(call)
  if implementation == "auto":
    if call.backend == "tpu" and reason is None:
      return False
    why = reason or f"splash runs on TPU, the backend is {call.backend!r}"
    _log_once(logging.DEBUG, f"ring attention {variant!r}, implementation='auto' runs the XLA "
                             f"code per shard: {why}")
    return None
  if reason is not None:
    raise ValueError(f"{variant} under ring attention: implementation='pallas_tpu' cannot serve "
                     f"this call: {reason}. Allowed: {list(RING)} ('auto' falls back to 'xla' "
                     f"where splash cannot serve)")
  interpret = call.backend != "tpu"
  if interpret:
    _log_once(logging.INFO, f"ring attention {variant!r}: implementation='pallas_tpu' on backend "
                            f"{call.backend!r} runs splash in Pallas interpret mode (slow; for "
                            f"tests)")
  return interpret


_TRACING_PER_DEVICE = threading.local()


@contextlib.contextmanager
def tracing_per_device():
  """Calls traced within count one device: for checking, without a mesh, a call
  that the model will make through attention.per_device."""
  _TRACING_PER_DEVICE.on = True
  try:
    yield
  finally:
    _TRACING_PER_DEVICE.on = False


def _devices_of_this_program():
  """How many devices jit's sharding may split this call over: 1 inside a
  shard_map over every mesh axis (attention.per_device, context.py), where
  each device runs its own program; else the devices of the mesh in use, or
  all of them."""
  if getattr(_TRACING_PER_DEVICE, "on", False):
    return 1
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return jax.device_count()
  return math.prod(size for size, kind in zip(mesh.axis_sizes, mesh.axis_types)
                   if kind != jax.sharding.AxisType.Manual)


def kernel_for(variant, implementation, s, dtype, *, causal, kv_mask, options, backend=None,
               devices=None) -> Optional[Callable]:
  """The kernel that computes this call of `variant`, or None for its XLA code.

  Args:
    variant: the variant's name.
    implementation: one of IMPLEMENTATIONS.
    s: the call's `common.Shapes`.
    dtype: the query's dtype.
    causal: the call's `causal`.
    kv_mask: the call's `kv_mask` (None or an array).
    options: the variant's options that change its result (its pattern's
      options, dense's `mask`, `alibi_slopes`).
    backend: None: jax.default_backend() (tests pass "tpu" or "gpu" to see
      what would be chosen there).
    devices: None: the devices jit may split this program over (1 inside
      shard_map; see _devices_of_this_program), likewise.

  Returns:
    None, or kernel(query, key, value, kv_mask, *, xla) -> [B, Lq, H, D] in
    the query's dtype, where `xla` is the variant's own code with the same
    options (xla(query, key, value, kv_mask=...)), for what a kernel can only
    decide at run time (cudnn.py: a key mask that is not a prefix).
  """
  check_implementation(variant, implementation)
  if implementation == "xla":
    return None
  call = Call(variant, s, jnp.dtype(dtype), causal, kv_mask is not None, dict(options),
              backend or jax.default_backend())
  devices = _devices_of_this_program() if devices is None else devices
  unsplit = (f"{devices} devices, and jit's sharding cannot split a Pallas call (not wrapped in "
             f"shard_map yet)")
  if implementation == "auto":
    reasons = []
    for name in _AUTO.get(call.backend, ()):
      reason = _KERNELS[name].why_not(call)
      if reason is None and devices > 1 and name not in _PARTITIONED:
        reason = unsplit
      if reason is None:
        return functools.partial(_KERNELS[name].attend, call=call, interpret=False)
      reasons.append(f"{name}: {reason}")
    why = "; ".join(reasons) or f"no kernel on backend {call.backend!r}"
    _log_once(logging.DEBUG, f"attention {variant!r}, implementation='auto' runs the XLA code: "
                             f"{why}")
    return None

  reason = _KERNELS[implementation].why_not(call)
  if reason is not None:
    raise ValueError(f"{variant}: implementation={implementation!r} cannot serve this call: "
                     f"{reason}. Allowed: {list(IMPLEMENTATIONS)} ('auto' falls back to 'xla' "
                     f"where no kernel serves a call)")
  if devices > 1 and implementation not in _PARTITIONED:
    _log_once(logging.WARNING, f"attention {variant!r}: implementation={implementation!r} over "
                               f"{unsplit}: it runs whole on every device")
  interpret = call.backend != _HOME[implementation]
  if interpret:
    _log_once(logging.INFO, f"attention {variant!r}: implementation={implementation!r} on "
                            f"backend {call.backend!r} runs the kernel in Pallas interpret mode "
                            f"(slow; for tests)")
  return functools.partial(_KERNELS[implementation].attend, call=call, interpret=interpret)
