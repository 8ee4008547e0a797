"""dense and blockwise on GPU through the Pallas (Triton) flash attention
kernel, `jax.experimental.pallas.ops.gpu.attention.mha` (FlashAttention-2's
algorithm; jax marks the module deprecated in favour of tokamax, which is not
a dependency here). "auto" takes it where cuDNN cannot serve: float32.

The kernel masks only causally (top-left aligned, as we do) and by segment
ids, one array [B, L] shared by queries and keys, so it has no sliding
window, no block-sparse pattern, no bias (no ALiBi) and no arbitrary mask:
local, strided and bigbird stay with the XLA code. What it needs, and what
this file does:

- One length for queries and keys, a multiple of its blocks (powers of two):
  both are padded to one length N. Padded query rows are cut off the output.
- Padded keys that a real query row could see (not causal, or more queries
  than keys) are masked: by segment ids when the lengths are equal (real
  positions 0, padding 1), else like `kv_mask`.
- `kv_mask` cannot be segment ids: query i would take key i's id. It becomes
  a logit bias through one more head dimension: queries get a 1 there, keys
  0 (real) or -big (masked), values 0. Masked logits are then about -big x
  scale, whose exp is exactly 0 beside any real logit. It costs a head
  dimension: the kernel pads D + 1 to a power of two (64 -> 128).
- Rows with no allowed key average the masked values (finite): zeroed after
  (empty_rows.py).
- No grouped-query heads (every index map reads key head h for query head
  h): key/value heads are repeated; their gradients sum back through the
  repeat.

Off a GPU (tests) the kernel runs in Pallas interpret mode.
"""

import warnings

import jax.numpy as jnp

from attention_research.attention import common
from attention_research.attention.kernels import empty_rows

VARIANTS = ("dense", "blockwise")
DTYPES = tuple(jnp.dtype(d) for d in (jnp.float32, jnp.bfloat16, jnp.float16))
_BLOCK = 128      # the forward blocks at most (the kernel's default)
_BWD_BLOCK = 32   # the backward blocks at most (its default)
_HEAD_DIM = 128   # the largest padded head_dim we hand it: its tiles grow with it (unmeasured)


def why_not(call):
  """None if the Pallas GPU kernel can serve `call` (a choose.Call), else the reason."""
  if call.variant not in VARIANTS:
    return (f"the Pallas GPU kernel masks only causally and by segment, so it has no "
            f"{call.variant!r} pattern (it serves {list(VARIANTS)})")
  if call.options.get("alibi_slopes") is not None:
    return "the Pallas GPU kernel takes no logit bias, so no ALiBi (`alibi_slopes`)"
  if call.options.get("mask") is not None:
    return "the Pallas GPU kernel takes no arbitrary `mask` (causal and kv_mask only)"
  if call.dtype not in DTYPES:
    return f"the Pallas GPU kernel computes float32, bfloat16 or float16, got {call.dtype}"
  _, _, bias = _layout(call)
  padded = 1 << (call.shapes.head_dim + bias - 1).bit_length()
  if padded > _HEAD_DIM:
    return (f"the Pallas GPU kernel pads head_dim {call.shapes.head_dim}"
            f"{' + 1 (the key mask)' if bias else ''} to {padded}, past the {_HEAD_DIM} it is "
            f"given here")
  return None


def _layout(call):
  """(block, length, bias): the kernel's forward block and the length both
  sequences are padded to, and whether the keys' mask takes a head dimension."""
  s = call.shapes
  longest = max(s.q_len, s.k_len)
  block = min(_BLOCK, max(16, 1 << (longest - 1).bit_length()))
  length = common.round_up(longest, block)
  padding_seen = length > s.k_len and (not call.causal or s.q_len > s.k_len)
  return block, length, call.kv_mask or (padding_seen and s.q_len != s.k_len)


def attend(query, key, value, kv_mask, *, call, interpret, xla=None):
  """`call.variant` by the Pallas GPU kernel: [B, Lq, H, D] in the query's dtype."""
  del xla  # the kernel serves every call it accepts
  # Imported here, not at the top: on import the module warns that it is deprecated.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

  s = call.shapes
  block, length, bias = _layout(call)
  # No GQA in the kernel: repeated key/value heads.
  kv = (jnp.repeat(x, s.groups, axis=2) for x in (key, value))
  q, k, v = (common.pad_axis(x, 1, length) for x in (query, *kv))
  segment_ids = None
  if bias:
    real = jnp.ones((s.batch, s.k_len), bool) if kv_mask is None else kv_mask
    q, k, v = _with_key_bias(q, k, v, common.pad_axis(real, 1, length, value=False))
  elif length > s.k_len and not call.causal:  # padded keys real rows would see
    segment_ids = jnp.broadcast_to((jnp.arange(length) >= s.k_len).astype(jnp.int32),
                                   (s.batch, length))
  bwd = min(_BWD_BLOCK, block)
  blocks = gpu_attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=bwd,
                                    block_kv_dkv=bwd, block_q_dq=bwd, block_kv_dq=bwd)
  out = gpu_attention.mha(q, k, v, segment_ids, sm_scale=common.default_scale(s.head_dim),
                          causal=call.causal, block_sizes=blocks, interpret=interpret)
  out = out[:, :s.q_len, :, :s.head_dim].astype(query.dtype)
  if kv_mask is not None:
    out = empty_rows.zero_rows_without_keys(out, kv_mask, causal=call.causal)
  return out


def _with_key_bias(q, k, v, real):
  """q, k, v [B, N, H, D] with one more head dimension that adds 0 (real key)
  or -big (masked key) to every logit; `real` is bool [B, N]."""
  big = min(1e30, float(jnp.finfo(q.dtype).max) / 2)  # float16: 32752, still exp() = 0
  bias = jnp.where(real, 0.0, -big).astype(k.dtype)[:, :, None, None]
  extra = lambda x, column: jnp.concatenate(
      [x, jnp.broadcast_to(column, x.shape[:-1] + (1,)).astype(x.dtype)], axis=-1)
  return extra(q, 1.0), extra(k, bias), extra(v, 0.0)
