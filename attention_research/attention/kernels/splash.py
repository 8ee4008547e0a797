"""The exact variants on TPU through Pallas splash attention
(jax.experimental.pallas.ops.tpu.splash_attention; the kernel MaxText uses).

Splash takes one static mask per head, [Lq, Lk], which it reduces to a table
of key blocks per query block: blocks the mask leaves empty are never
computed, so a block-sparse pattern costs what it keeps. The variants' masks:

  dense, blockwise  CausalMask or FullMask (computed inside the kernel);
                    dense's `mask`, when it is a concrete (NumPy) pattern
                    [Lq, Lk] or per head [H, Lq, Lk], as NumpyMasks
  local             LocalMask, window (w, w), causal (w, 0)
  strided, bigbird  our own patterns (masks.strided_allowed,
                    masks.bigbird_key_blocks), evaluated tile by tile when
                    splash asks for them (`_Pattern`), so no [Lq, Lk] array
                    is built

and `kv_mask` becomes segment ids (a key is seen where its id equals the
query's: real keys 0, masked and padded keys 1). Grouped-query heads are
splash's own: its multi-head kernel maps query head h to key/value head
h // (H / Hkv). What splash does differently from us, and what this file does
about it:

- It does not scale the logits: the queries are scaled by 1/sqrt(D) first.
- Its layout is heads-first, [H, L, D] per example: transposed, and vmapped
  over the batch.
- Its blocks are multiples of 128 tokens: the lengths are padded to a
  multiple of 128 and the padded keys masked (segment ids); the padded query
  rows are cut off the output.
- A row with no allowed key gives NaN (0/0) where no key block of its row is
  computed, and the mean of the masked values where one is. We pass it
  `sinks` of -1e30 per head (an extra logit in every row's softmax): a row
  with an allowed key then loses exactly nothing (exp(-1e30 - max) is 0),
  and a row without one gives exactly zero, in value and gradient.

Off a TPU (tests) the kernel runs in Pallas interpret mode (`interpret=True`):
slowly, but the same kernel code. Splash has no bias input, so no ALiBi.
"""

import functools

import jax
from jax.experimental.pallas.ops.tpu import splash_attention as sa
import jax.numpy as jnp
import numpy as np

from attention_research.attention import common
from attention_research.attention import masks

VARIANTS = ("dense", "blockwise", "local", "strided", "bigbird")
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
LANES = 128  # splash's key blocks (block_kv_compute) are multiples of this
SINK = -1e30  # a logit below any real one, above splash's mask value (-0.7 x float32 max)


def why_not(call):
  """None if splash can serve `call` (a choose.Call), else the reason."""
  o = call.options
  if call.variant not in VARIANTS:
    return f"splash has no pattern for {call.variant!r} (it serves {list(VARIANTS)})"
  if o.get("alibi_slopes") is not None:
    return "splash takes no logit bias, so no ALiBi (`alibi_slopes`)"
  if call.dtype not in DTYPES:
    return f"splash computes float32 or bfloat16, got {call.dtype}"
  mask = o.get("mask")
  if mask is not None:
    if isinstance(mask, jax.core.Tracer):
      return ("dense's `mask` is traced; splash needs the pattern while tracing (pass a NumPy "
              "array)")
    if np.ndim(mask) == 4 and np.shape(mask)[0] != 1:
      return "dense's `mask` differs per batch row; splash takes one pattern per head"
  return None


def attend(query, key, value, kv_mask, *, call, interpret, xla=None):
  """`call.variant` by splash attention: [B, Lq, H, D] in the query's dtype."""
  del xla  # splash serves every call it accepts
  s = call.shapes
  lq, lk = common.round_up(s.q_len, LANES), common.round_up(s.k_len, LANES)
  bq, bk = block_size(lq), block_size(lk)
  blocks = sa.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                         block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  kernel = sa.make_splash_mha(_mask(call, lq, lk), block_sizes=blocks, head_shards=1,
                              q_seq_shards=1, interpret=interpret)

  q = query * jnp.asarray(common.default_scale(s.head_dim), query.dtype)  # splash does not scale
  heads_first = lambda x, length: common.pad_axis(x, 1, length).transpose(0, 2, 1, 3)
  q, k, v = heads_first(q, lq), heads_first(key, lk), heads_first(value, lk)
  sinks = jnp.full((s.heads,), SINK, jnp.float32)
  if kv_mask is None and lk == s.k_len:
    out = jax.vmap(lambda q, k, v: kernel(q, k, v, None, sinks))(q, k, v)
  else:
    real = jnp.ones((s.batch, s.k_len), bool) if kv_mask is None else kv_mask
    real = common.pad_axis(real, 1, lk, value=False)
    ids = sa.SegmentIds(q=jnp.zeros((s.batch, lq), jnp.int32),
                        kv=jnp.where(real, 0, 1).astype(jnp.int32))
    out = jax.vmap(lambda q, k, v, ids: kernel(q, k, v, ids, sinks))(q, k, v, ids)
  return out[:, :, :s.q_len].transpose(0, 2, 1, 3).astype(query.dtype)


def block_size(length):
  """The largest of 512, 256, 128 that divides `length` (a multiple of 128)."""
  return next(b for b in (512, 256, LANES) if length % b == 0)


def _mask(call, lq, lk):
  """The splash mask [H, lq, lk] of the call's pattern on the padded lengths.

  The pattern is the variant's on the real lengths; padded keys are masked by
  segment ids, padded query rows are cut off the output.
  """
  s, o, causal = call.shapes, call.options, call.causal
  shape = (lq, lk)
  if call.variant == "local":
    w = o["window"]
    pattern = sa.LocalMask(shape, window_size=(w, 0 if causal else w), offset=0)
  elif call.variant == "strided":
    allowed = functools.partial(masks.strided_allowed, stride=o["stride"], causal=causal)
    pattern = _Pattern(shape, s.q_len, s.k_len, allowed, ("strided", o["stride"], causal))
  elif call.variant == "bigbird":
    pattern = _bigbird(s, causal, shape, o)
  elif o.get("mask") is not None:
    return sa.MultiHeadMask(_numpy_masks(o["mask"], s, causal, shape))
  else:
    pattern = sa.CausalMask(shape) if causal else sa.FullMask(shape)
  return sa.MultiHeadMask([pattern] * s.heads)


def _numpy_masks(mask, s, causal, shape):
  """dense's concrete `mask` (broadcastable to [1, H, Lq, Lk]) AND causal, one
  NumpyMask per head, padded with False."""
  mask = np.asarray(mask, bool)
  mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)[0]   # [1 or H, 1 or Lq, 1 or Lk]
  mask = np.broadcast_to(mask, (mask.shape[0], s.q_len, s.k_len))
  mask = mask & masks.full_mask(s.q_len, s.k_len, causal=causal)
  padded = np.zeros((mask.shape[0],) + shape, bool)
  padded[:, :s.q_len, :s.k_len] = mask
  per_head = [sa.NumpyMask(m) for m in padded]
  return per_head * s.heads if len(per_head) == 1 else per_head


def _bigbird(s, causal, shape, o):
  """bigbird's pattern from its block table (masks.bigbird_key_blocks, as
  `bigbird` and `bigbird_mask` use it): [nq, nk] blocks, expanded per tile."""
  size = o["block_size"]
  nq, nk = -(-s.q_len // size), -(-s.k_len // size)
  table = masks.bigbird_key_blocks(nq, nk, num_window_blocks=o["num_window_blocks"],
                                   num_global_blocks=o["num_global_blocks"],
                                   num_random_blocks=o["num_random_blocks"], seed=o["seed"],
                                   causal=causal)
  blocks = np.zeros((nq, nk + 1), bool)  # the last column absorbs the -1 padding
  np.put_along_axis(blocks, np.where(table < 0, nk, table), True, axis=1)
  blocks = blocks[:, :nk]

  def allowed(i, j):
    seen = blocks[np.minimum(i // size, nq - 1), np.minimum(j // size, nk - 1)]
    return seen & (j <= i) if causal else seen
  return _Pattern(shape, s.q_len, s.k_len, allowed, ("bigbird", tuple(sorted(o.items())), causal))


class _Pattern(sa.Mask):
  """A splash mask that evaluates one of our patterns, allowed(i, j) on NumPy
  index grids, on the tiles splash asks for; False outside the real [q_len,
  k_len]. Splash's base class is required: its mask processing slices masks
  and hashes them (the `key`, with the shapes, says which pattern this is)."""

  def __init__(self, shape, q_len, k_len, allowed, key):
    self._shape, self._q_len, self._k_len, self._allowed = tuple(shape), q_len, k_len, allowed
    self._key = (key, tuple(shape), q_len, k_len)

  @property
  def shape(self):
    return self._shape

  def __getitem__(self, idx):
    rows, cols = (np.arange(n)[i] for i, n in zip(idx, self._shape))
    i, j = rows[:, None], cols[None, :]
    inside = (i < self._q_len) & (j < self._k_len)
    return np.broadcast_to(inside & np.asarray(self._allowed(i, j), bool), inside.shape)

  def __eq__(self, other):
    return isinstance(other, _Pattern) and self._key == other._key

  def __hash__(self):
    return hash(self._key)
