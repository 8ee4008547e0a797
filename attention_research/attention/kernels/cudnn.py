"""dense, blockwise and causal local on NVIDIA GPUs through cuDNN's flash
attention: `jax.nn.dot_product_attention(..., implementation="cudnn")`.

Our layout is jax's, [B, L, H, D], and jax takes grouped-query heads, causal
(top-left aligned) and a causal sliding window (`local_window_size=(w, 0)`:
key j >= i - w) as they are. What cuDNN does not take, and what this file does:

- float16 and bfloat16 only, head_dim a multiple of 8 and at most 128 (256
  from Hopper on): "auto" falls back to the next kernel, and an explicit
  "cudnn" is a ValueError. float32 calls go to the Pallas GPU kernel.
- No window without `causal` (jax refuses a right window there): non-causal
  local is the XLA code.
- No block-sparse pattern (strided, bigbird) and no bias (ALiBi); no
  arbitrary `mask` either (jax would turn it into a [B, H, Lq, Lk] bias).
- Key masks only as sequence lengths: a `kv_mask` whose real keys are a
  prefix of each row. That is checked at run time: a mask that is not a
  prefix runs the variant's own XLA code instead (`lax.cond`; under vmap both
  run). A row of only masked keys is given one key (cuDNN's lengths start at
  1) and zeroed after, as are the local rows whose window ends before the
  real keys start (`query_seq_lengths` leaves those out of the kernel), so
  cuDNN never sees a row without a key.
- Even sequence lengths only in jax's backward: an odd query or key length
  is padded by one row, kept out by the sequence lengths.

Untested on a GPU in this repository's CI (no GPU there); the tests check the
mapping above by running it through jax's XLA implementation of the same
function (`IMPLEMENTATION`), which takes the same arguments.
"""

import jax
import jax.numpy as jnp

from attention_research.attention.kernels import empty_rows

VARIANTS = ("dense", "blockwise", "local")
DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))
IMPLEMENTATION = "cudnn"  # jax.nn.dot_product_attention's; the tests set "xla"


def why_not(call):
  """None if cuDNN can serve `call` (a choose.Call), else the reason."""
  if call.variant not in VARIANTS:
    return (f"cuDNN has no {call.variant!r} pattern (it serves {list(VARIANTS)}; local only "
            f"causal)")
  if call.backend != "gpu":
    return f"cuDNN needs a GPU, and the backend is {call.backend!r}"
  if not _is_nvidia():
    return "cuDNN needs an NVIDIA GPU (this one runs ROCm)"
  if call.variant == "local" and not call.causal:
    return "cuDNN's sliding window is causal only (jax refuses a right window without causal)"
  if call.options.get("alibi_slopes") is not None:
    return "no bias through cuDNN here, so no ALiBi (`alibi_slopes`)"
  if call.options.get("mask") is not None:
    return "no arbitrary `mask` through cuDNN here (causal, local and kv_mask only)"
  if call.dtype not in DTYPES:
    return f"cuDNN flash attention computes float16 or bfloat16, got {call.dtype}"
  limit = _head_dim_limit()
  if call.shapes.head_dim % 8 or call.shapes.head_dim > limit:
    return (f"cuDNN needs head_dim a multiple of 8 and at most {limit} on this GPU, got "
            f"{call.shapes.head_dim}")
  return None


def _is_nvidia():
  """False on a ROCm GPU; True on CUDA and off a GPU (a test's stand-in backend)."""
  if jax.default_backend() != "gpu":
    return True
  version = getattr(getattr(jax.devices()[0], "client", None), "platform_version", "")
  return "rocm" not in str(version).lower()


def _head_dim_limit():
  """256 from Hopper (compute capability 9.0) on, 128 before (jax's check)."""
  try:
    capability = jax.devices()[0].compute_capability
    return 256 if float(capability) >= 9.0 else 128
  except (AttributeError, ValueError):  # not a CUDA device (a test's stand-in backend)
    return 128


def attend(query, key, value, kv_mask, *, call, interpret, xla):
  """`call.variant` by cuDNN: [B, Lq, H, D] in the query's dtype."""
  del interpret  # cuDNN has no interpreter: choose.py refuses it off a GPU
  s = call.shapes
  window = call.options["window"] if call.variant == "local" else None
  # jax's cuDNN backward refuses an odd query or key length: jax 0.11 and 0.12
  # stand an empty array in for a missing bias, and then their own check takes
  # it for a bias, which wants both lengths even (the H200 check's failures).
  # So an odd length gets one more row, which the sequence lengths leave out
  # and the slice below drops.
  even = lambda x, n: jnp.pad(x, ((0, 0), (0, n % 2), (0, 0), (0, 0))) if n % 2 else x
  q, k, v = even(query, s.q_len), even(key, s.k_len), even(value, s.k_len)

  def kernel(lengths=None):
    padding = {}
    if lengths is not None:
      lengths = jnp.maximum(lengths, 1)  # cuDNN is never handed a row without a key
      q_lengths = jnp.full_like(lengths, s.q_len)
      if window is not None:  # rows past the last real key + window see none
        q_lengths = jnp.minimum(q_lengths, lengths + window)
      padding = dict(query_seq_lengths=q_lengths, key_value_seq_lengths=lengths)
    out = jax.nn.dot_product_attention(
        q, k, v, is_causal=call.causal,
        local_window_size=None if window is None else (window, 0),
        implementation=IMPLEMENTATION, **padding)
    return out[:, :s.q_len].astype(query.dtype)

  padded = s.q_len % 2 or s.k_len % 2
  if kv_mask is None and not padded and (window is None or s.q_len <= s.k_len + window):
    return kernel()
  real = jnp.ones((s.batch, s.k_len), bool) if kv_mask is None else kv_mask
  lengths = real.sum(axis=1, dtype=jnp.int32)
  if kv_mask is None:
    out = kernel(lengths)
  else:
    is_prefix = jnp.all(kv_mask == (jnp.arange(s.k_len) < lengths[:, None]))
    out = jax.lax.cond(is_prefix, kernel, lambda _: xla(query, key, value, kv_mask=kv_mask),
                       lengths)
  return empty_rows.zero_rows_without_keys(out, real, causal=call.causal, window=window)
