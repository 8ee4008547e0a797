"""The attention contract, checked in one place, and the softmax pieces the
exact variants share.

Every variant takes query [B, Lq, H, D], key and value [B, Lk, Hkv, D] with
H % Hkv == 0, and an optional bool kv_mask [B, Lk]. `check_inputs` raises a
ValueError naming the argument before anything is traced into a computation.

The exact variants compute softmax attention over some set of keys per query,
often in pieces (key blocks, or a band plus a strided part). A piece is kept
as *partials* (m, l, acc): the row max of its logits, the sum of exp(logit - m)
and the exp-weighted sum of values. Partials of disjoint key sets merge
exactly, and `finalize` turns them into the output, giving zeros for a query
row that had no key at all.

ALiBi (Press et al. 2022, "Train Short, Test Long") is an additive logit bias
-slope[h] * |i - j|; `alibi_slopes` gives the paper's slopes, and
`check_alibi_slopes` / `alibi_bias` are what the variants that take it share.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Shapes(NamedTuple):
  batch: int
  q_len: int
  k_len: int
  heads: int
  kv_heads: int
  head_dim: int

  @property
  def groups(self) -> int:
    """Query heads per key/value head (1 for multi-head, H for MQA)."""
    return self.heads // self.kv_heads


def check_inputs(variant, query, key, value, kv_mask) -> Shapes:
  """Checks the shared contract; returns the sizes."""
  for arg, x in (("query", query), ("key", key), ("value", value)):
    if not hasattr(x, "shape") or x.ndim != 4:
      raise ValueError(
          f"{variant}: `{arg}` must have rank 4 [batch, length, heads, head_dim],"
          f" got shape {getattr(x, 'shape', type(x).__name__)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{variant}: `{arg}` must be a floating array, got {x.dtype}")
  b, lq, h, d = query.shape
  if key.shape != value.shape:
    raise ValueError(
        f"{variant}: `key` and `value` must have the same shape, got "
        f"{key.shape} and {value.shape}")
  bk, lk, hkv, dk = key.shape
  if bk != b:
    raise ValueError(f"{variant}: `key` batch {bk} != `query` batch {b}")
  if dk != d:
    raise ValueError(f"{variant}: `key` head_dim {dk} != `query` head_dim {d}")
  if hkv < 1 or h % hkv:
    raise ValueError(
        f"{variant}: `query` heads ({h}) must be a multiple of `key`/`value` "
        f"heads ({hkv}) for grouped-query attention")
  if lq < 1 or lk < 1 or d < 1:
    raise ValueError(f"{variant}: empty length or head_dim: query {query.shape}, key {key.shape}")
  if kv_mask is not None:
    if not hasattr(kv_mask, "shape") or tuple(kv_mask.shape) != (b, lk):
      raise ValueError(
          f"{variant}: `kv_mask` must have shape [batch, k_len] = {(b, lk)}, got "
          f"{getattr(kv_mask, 'shape', type(kv_mask).__name__)}")
    if kv_mask.dtype != jnp.bool_:
      raise ValueError(f"{variant}: `kv_mask` must be bool (True = real token), got {kv_mask.dtype}")
  return Shapes(b, lq, lk, h, hkv, d)


def positive_int(variant, option, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{variant}: `{option}` must be a positive integer, got {value!r}")
  return int(value)


def non_negative_int(variant, option, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{variant}: `{option}` must be an integer >= 0, got {value!r}")
  return int(value)


def one_of(variant, option, value, allowed):
  if value not in allowed:
    raise ValueError(f"{variant}: `{option}` must be one of {list(allowed)}, got {value!r}")
  return value


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def pad_axis(x, axis: int, new_size: int, value=0):
  """Pads `x` at the end of `axis` to `new_size`."""
  extra = new_size - x.shape[axis]
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def alibi_slopes(num_heads) -> np.ndarray:
  """The ALiBi head slopes of Press et al. 2022 as float32 [num_heads].

  For n a power of two: the geometric sequence 2^(-8/n), 2^(-16/n), ...,
  2^(-8). Otherwise, as in the paper's reference code: the slopes for the
  largest power of two p < n, then every other slope for 2p starting with its
  first (2^(-4/p), 2^(-12/p), ..., the ones between the first p) up to n.
  """
  num_heads = positive_int("alibi_slopes", "num_heads", num_heads)
  power = 1 << (num_heads.bit_length() - 1)  # largest power of two <= num_heads

  def geometric(n):  # in float64, rounded to float32 once
    return 2.0 ** (-8.0 * np.arange(1, n + 1) / n)
  slopes = geometric(power)
  if power < num_heads:
    slopes = np.concatenate([slopes, geometric(2 * power)[0::2][:num_heads - power]])
  return slopes.astype(np.float32)


def check_alibi_slopes(variant, slopes, heads):
  """None, or the slopes as a float32 [heads] constant (no gradient flows into it).

  Accepts NumPy or jax arrays (traced ones too); checks shape and dtype only,
  so it never needs the values.
  """
  if slopes is None:
    return None
  if not hasattr(slopes, "shape"):
    slopes = np.asarray(slopes)
  if tuple(slopes.shape) != (heads,):
    raise ValueError(
        f"{variant}: `alibi_slopes` must have shape [heads] = {(heads,)} (one slope per "
        f"query head), got {tuple(slopes.shape)}")
  if not jnp.issubdtype(slopes.dtype, jnp.floating):
    raise ValueError(f"{variant}: `alibi_slopes` must be a floating array, got {slopes.dtype}")
  # A positional constant, not a parameter (blockwise's custom VJP gives it a zero cotangent).
  return jax.lax.stop_gradient(jnp.asarray(slopes, jnp.float32))


def alibi_bias(slopes, q_pos, k_pos):
  """-slopes * |q_pos - k_pos| in float32, for one tile of positions.

  q_pos and k_pos are integer positions that broadcast to the tile; slopes is
  shaped by the caller to broadcast against it (heads on the logits' axes).
  """
  distance = jnp.abs(q_pos - k_pos).astype(jnp.float32)
  return -slopes * distance


class Partials(NamedTuple):
  """Softmax attention over one key subset: see the module docstring."""
  m: jax.Array    # [..., q]
  l: jax.Array    # [..., q]
  acc: jax.Array  # [..., q, d]


def masked_softmax_terms(logits, mask):
  """Returns (m, p): row max over allowed keys and exp(logits - m) (0 where masked).

  A row with no allowed key has m = -inf and p = 0. The max carries no
  gradient: the final result does not depend on it.
  """
  logits = jnp.where(mask, logits, -jnp.inf)
  m = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
  safe_m = jnp.where(jnp.isfinite(m), m, 0.0)
  return m, jnp.exp(logits - safe_m[..., None])


def merge(a: Partials, b: Partials) -> Partials:
  """Partials over the union of two disjoint key sets."""
  m = jnp.maximum(a.m, b.m)
  safe_m = jnp.where(jnp.isfinite(m), m, 0.0)
  ca, cb = jnp.exp(a.m - safe_m), jnp.exp(b.m - safe_m)  # 0 for a side with no key
  return Partials(m, a.l * ca + b.l * cb, a.acc * ca[..., None] + b.acc * cb[..., None])


def finalize(p: Partials, dtype):
  """acc / l, with zeros for rows that saw no key."""
  has_key = p.l > 0
  out = p.acc / jnp.where(has_key, p.l, 1.0)[..., None]
  return jnp.where(has_key[..., None], out, 0.0).astype(dtype)


def default_scale(head_dim: int) -> float:
  return float(head_dim) ** -0.5


def softmax_flops_per_query(keys, seq_len, heads, head_dim) -> float:
  """Forward FLOPs of exact attention for one query that sees `keys` keys.

  q.k and p.v cost 2 D FLOPs each per key and head (2 FLOPs per
  multiply-accumulate), so 4 H D per key, for at most seq_len keys. Padding
  inside gathered blocks and the elementwise softmax are not counted.
  """
  return float(4 * heads * head_dim * min(keys, seq_len))
