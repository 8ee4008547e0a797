"""Blockwise (flash) attention: exact softmax attention in O(L) memory.

Queries are processed in blocks of `block_q`; for each, the keys stream past
in blocks of `block_k` while an online softmax keeps a running row max, row
sum and output (Rabe and Staats 2021, "Self-attention does not need O(n^2)
memory"; Dao et al. 2022, FlashAttention). The backward pass is a custom VJP
that saves only the output and the per-row log-sum-exp and recomputes each
block's probabilities, so neither pass ever holds an Lq x Lk matrix. With
`causal=True` the key blocks above the diagonal are never visited. An ALiBi
bias (Press et al. 2022) is built per [block_q, block_k] tile from the tile's
positions, in both passes, so it keeps that memory bound too.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from attention_research.attention import common
from attention_research.attention import context
from attention_research.attention import kernels
from attention_research.attention.kernels import splash_ring


def blockwise(query, key, value, *, causal=False, kv_mask=None, block_q=None, block_k=512,
              bwd_block_q=512, bwd_block_k=256, sequential_heads=None, alibi_slopes=None,
              implementation="auto"):
  """Exact softmax attention computed block by block.

  Args:
    query: [B, Lq, H, D].
    key, value: [B, Lk, Hkv, D], H % Hkv == 0.
    causal: query i sees key j only if j <= i (top-left aligned).
    kv_mask: bool [B, Lk], True where the key is a real token.
    block_q, block_k: the forward pass's block sizes (clipped to the
      lengths). block_q None: blocks of at most 2048 query rows when heads
      run one at a time (the CPU default), or 1024 under `causal`, whose
      diagonal tiles are partly wasted work that grows with the block (both
      beat 512 on CPU: docs/benchmarks/README.md, blockwise); at most 512
      when all heads share a step, whose tile is heads times larger. The
      rows are split evenly over as few blocks as that allows (rounded up to
      a multiple of 8), so padding stays under 8 rows a block: 2049 rows run
      as two blocks of 1032.
    bwd_block_q, bwd_block_k: the backward pass's block sizes. It keeps four
      [bwd_block_q, bwd_block_k] tiles live a step (logits, P, dP, dS), so
      its tiles are smaller than the forward's to stay in cache (measured on
      two CPUs: docs/benchmarks/README.md, blockwise).
    sequential_heads: process one query head at a time (a loop over heads)
      instead of all heads in each block step. None: True on CPU, where a
      block's tiles then stay in L2 (docs/benchmarks/README.md, blockwise);
      False elsewhere, where the heads are parallel work.
    alibi_slopes: None (no bias) or float [H], one slope per query head: the
      logit of query i, key j in head h gets -alibi_slopes[h] * |i - j|
      (ALiBi), positions top-left aligned (i in [0, Lq), j in [0, Lk)). Under
      `causal` that is the paper's -slope * (i - j); without it the distance
      is symmetric, as in bidirectional uses of ALiBi. A constant: no gradient
      flows into it. `attention.alibi_slopes(H)` gives the paper's slopes.

    implementation: "auto", "xla" (the code here), "pallas_tpu", "pallas_gpu"
      or "cudnn": who computes the call (kernels/choose.py). The block
      options and `sequential_heads` are the XLA code's tiling (checked
      whoever computes); no kernel serves `alibi_slopes`.

  Returns:
    [B, Lq, H, D] in query's dtype; rows with no allowed key are zero.
  """
  s = common.check_inputs("blockwise", query, key, value, kv_mask)
  _resolve_blocks("blockwise", s, causal, block_q, block_k, bwd_block_q, bwd_block_k,
                  sequential_heads)
  kernel = kernels.kernel_for("blockwise", implementation, s, query.dtype, causal=causal,
                              kv_mask=kv_mask, options=dict(alibi_slopes=alibi_slopes))
  if kernel is not None:
    return kernel(query, key, value, kv_mask, xla=functools.partial(
        blockwise, causal=causal, block_q=block_q, block_k=block_k, bwd_block_q=bwd_block_q,
        bwd_block_k=bwd_block_k, sequential_heads=sequential_heads, alibi_slopes=alibi_slopes,
        implementation="xla"))
  return attention_with_lse(query, key, value, causal=causal, kv_mask=kv_mask,
                            block_q=block_q, block_k=block_k, bwd_block_q=bwd_block_q,
                            bwd_block_k=bwd_block_k, sequential_heads=sequential_heads,
                            alibi_slopes=alibi_slopes, variant="blockwise")[0]


def attention_with_lse(query, key, value, *, causal=False, kv_mask=None, block_q=None,
                       block_k=512, bwd_block_q=512, bwd_block_k=256, sequential_heads=None,
                       alibi_slopes=None, variant="blockwise", out_dtype=None, positions=None):
  """`blockwise`, also returning the log-sum-exp of each row's logits.

  Returns (out [B, Lq, H, D], lse [B, Lq, H] float32, -inf for a row with no
  key); both are differentiable, so callers can merge this attention with
  attention over other keys (the strided variant does, with out_dtype=float32
  so that bfloat16 outputs are rounded once, after the merge). With
  `alibi_slopes` the logits include the ALiBi bias (positions top-left aligned
  within this call's query and key), and so does the lse. `positions` (a
  `Positions`; None: top-left aligned) places the rows elsewhere in the
  sequence, for the causal mask and ALiBi: context parallelism's shards.
  """
  s = common.check_inputs(variant, query, key, value, kv_mask)
  slopes = common.check_alibi_slopes(variant, alibi_slopes, s.heads)
  fwd_blocks, bwd_blocks, sequential_heads = _resolve_blocks(
      variant, s, causal, block_q, block_k, bwd_block_q, bwd_block_k, sequential_heads)
  q, k, v, slopes = kernel_layout(query, key, value, slopes, s)
  out, lse = _flash(q, k, v, kv_mask, slopes, positions or Positions(), causal, fwd_blocks,
                    bwd_blocks, sequential_heads)
  return sequence_layout(out, lse, s, out_dtype or query.dtype)


def _resolve_blocks(variant, s, causal, block_q, block_k, bwd_block_q, bwd_block_k,
                    sequential_heads):
  """(forward blocks, backward blocks, sequential_heads) with the defaults of `blockwise`."""
  if sequential_heads is None:
    sequential_heads = jax.default_backend() == "cpu"
  elif not isinstance(sequential_heads, bool):
    raise ValueError(f"{variant}: `sequential_heads` must be None, True or False, "
                     f"got {sequential_heads!r}")
  if block_q is None:
    block_q = _balanced_block(s.q_len, (1024 if causal else 2048) if sequential_heads else 512)
  fwd_blocks = (min(common.positive_int(variant, "block_q", block_q), s.q_len),
                min(common.positive_int(variant, "block_k", block_k), s.k_len))
  bwd_blocks = (min(common.positive_int(variant, "bwd_block_q", bwd_block_q), s.q_len),
                min(common.positive_int(variant, "bwd_block_k", bwd_block_k), s.k_len))
  return fwd_blocks, bwd_blocks, sequential_heads


def kernel_layout(query, key, value, slopes, s):
  """The kernels' layout: q [B, Hkv, G, Lq, D] (scaled by 1/sqrt(D)), k and v
  [B, Hkv, Lk, D], slopes (or None) [B, Hkv, G]: one key/value head serves its
  G query heads in one matmul, and the slopes are laid out like q's leading
  axes, so _per_head can pick them too."""
  q = query * jnp.asarray(common.default_scale(s.head_dim), query.dtype)
  q = q.reshape(s.batch, s.q_len, s.kv_heads, s.groups, s.head_dim).transpose(0, 2, 3, 1, 4)
  k, v = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
  if slopes is not None:
    slopes = jnp.broadcast_to(slopes.reshape(1, s.kv_heads, s.groups),
                              (s.batch, s.kv_heads, s.groups))
  return q, k, v, slopes


def sequence_layout(out, lse, s, dtype):
  """The kernels' out and lse back to [B, Lq, H, D] in `dtype` and [B, Lq, H]
  float32, -inf for a row with no key."""
  out = out.transpose(0, 3, 1, 2, 4).reshape(s.batch, s.q_len, s.heads, s.head_dim)
  lse = lse.transpose(0, 3, 1, 2).reshape(s.batch, s.q_len, s.heads)
  return out.astype(dtype), jnp.where(jnp.isfinite(lse), lse, -jnp.inf)


def _balanced_block(length, largest):
  """Rows a block: all `length` if they fit in `largest`, else the smallest
  multiple of 8 that cuts them into as few blocks as `largest` allows: 2049
  rows make two blocks of 1032, not a second 2048-row block of padding."""
  if length <= largest:
    return length
  n = -(-length // largest)
  return min(largest, common.round_up(-(-length // n), 8))


def _padded_keys(k, v, kv_mask, bk):
  """k, v padded to a multiple of bk keys, and the padded key mask: None
  when every key is real, so the passes skip the mask work entirely."""
  k_len = k.shape[2]
  lk_pad = common.round_up(k_len, bk)
  if kv_mask is None and lk_pad == k_len:
    return k, v, None
  k_valid = jnp.ones((k.shape[0], k_len), bool) if kv_mask is None else kv_mask
  return (common.pad_axis(k, 2, lk_pad), common.pad_axis(v, 2, lk_pad),
          common.pad_axis(k_valid, 1, lk_pad, value=False))


class Positions(NamedTuple):
  """Where the rows of a call sit in the sequence: query row r is at position
  q_start + q_stride * r, key row c at k_start + k_stride * c. The causal mask
  and ALiBi read these positions. One device's call has the default (0, 1, 0, 1);
  under context parallelism each shard's rows start elsewhere, and a striped
  shard holds every n-th position (ints, or traced int32 scalars)."""
  q_start: object = 0
  q_stride: object = 1
  k_start: object = 0
  k_stride: object = 1

  def query(self, first, rows):
    return self.q_start + self.q_stride * (first + jnp.arange(rows))

  def key(self, first, rows):
    return self.k_start + self.k_stride * (first + jnp.arange(rows))


def _block_mask(k_valid, causal, qi, kj, bq, bk, pos):
  """bool mask broadcastable to [B, Hkv, G, bq, bk], or None if all allowed."""
  mask = None
  if k_valid is not None:
    mask = jax.lax.dynamic_slice_in_dim(k_valid, kj * bk, bk, axis=1)[:, None, None, None, :]
  if causal:
    tri = pos.query(qi * bq, bq)[:, None] >= pos.key(kj * bk, bk)[None, :]
    mask = tri if mask is None else mask & tri
  return mask


def _block_logits(q_blk, k_blk, k_valid, slopes, causal, qi, kj, bq, bk, pos):
  """Logits of one [bq, bk] tile, biased and masked (-inf where not allowed)."""
  logits = jnp.einsum("bhgqd,bhkd->bhgqk", q_blk, k_blk, preferred_element_type=jnp.float32)
  return _bias_and_mask(logits, k_valid, slopes, causal, qi, kj, bq, bk, pos)


def _bias_and_mask(logits, k_valid, slopes, causal, qi, kj, bq, bk, pos):
  """Tile qi, kj's logits plus the ALiBi bias, -inf where not allowed."""
  if slopes is not None:
    logits = logits + common.alibi_bias(slopes[..., None, None], pos.query(qi * bq, bq)[:, None],
                                        pos.key(kj * bk, bk)[None, :])
  mask = _block_mask(k_valid, causal, qi, kj, bq, bk, pos)
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  return logits


def _num_key_blocks(qi, causal, bq, bk, nk, pos):
  """Key blocks query block qi needs: all, or those that start at or before
  its last position (causal; the rest are wholly masked)."""
  if not causal:
    return nk
  last_query = pos.q_start + pos.q_stride * ((qi + 1) * bq - 1)
  return jnp.clip((last_query - pos.k_start) // (pos.k_stride * bk) + 1, 0, nk)


def _first_query_block(kj, causal, bq, bk, nq, pos):
  """The first query block that sees key block kj: 0, or (causal) the first
  whose last position is at or after the block's first key."""
  if not causal:
    return 0
  first_key = pos.k_start + pos.k_stride * kj * bk
  rows = -((pos.q_start - first_key) // pos.q_stride)  # query rows before first_key, rounded up
  return jnp.clip(rows // bq, 0, nq)


def _forward(q, k, v, k_valid, slopes, out, lse, causal, bq, bk, pos=Positions()):
  """Attention of q over k and v merged into (out [B, Hkv, G, Lq, D] float32,
  lse [B, Hkv, G, Lq]), the normalised output and log-sum-exp of keys seen
  before (lse not finite: none yet), in place; lse is +inf for a row with no key."""
  b, hkv, g, lq, d = q.shape
  nk = k.shape[2] // bk
  # Key blocks laid out [D, bk] once, so no tile transposes its keys.
  k_blocks = k.reshape(b, hkv, nk, bk, d).swapaxes(3, 4)

  def query_block(qi, carry):
    out, lse = carry
    q_blk = jax.lax.dynamic_slice_in_dim(q, qi * bq, bq, axis=3)
    lse_blk = jax.lax.dynamic_slice_in_dim(lse, qi * bq, bq, axis=3)
    seen = jnp.isfinite(lse_blk)
    # The online softmax goes on from the keys seen before: their normalised
    # output is their weighted sum at scale lse, with weight sum 1.
    m = jnp.where(seen, lse_blk, -jnp.inf)
    l = seen.astype(jnp.float32)
    acc = jnp.where(seen[..., None], jax.lax.dynamic_slice_in_dim(out, qi * bq, bq, axis=3), 0.0)

    def key_block(kj, carry):
      m, l, acc = carry
      k_blk = jax.lax.dynamic_index_in_dim(k_blocks, kj, axis=2, keepdims=False)
      v_blk = jax.lax.dynamic_slice_in_dim(v, kj * bk, bk, axis=2)
      logits = jnp.einsum("bhgqd,bhdk->bhgqk", q_blk, k_blk, preferred_element_type=jnp.float32)
      logits = _bias_and_mask(logits, k_valid, slopes, causal, qi, kj, bq, bk, pos)
      m_new = jnp.maximum(m, logits.max(-1))
      safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p = jnp.exp(logits - safe[..., None])
      corr = jnp.exp(m - safe)
      l = l * corr + p.sum(-1)
      pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v.dtype), v_blk,
                      preferred_element_type=jnp.float32)
      return m_new, l, acc * corr[..., None] + pv

    m, l, acc = jax.lax.fori_loop(0, _num_key_blocks(qi, causal, bq, bk, nk, pos), key_block,
                                  (m, l, acc))
    has_key = l > 0
    out_blk = jnp.where(has_key[..., None], acc / jnp.where(has_key, l, 1.0)[..., None], 0.0)
    # +inf for an empty row makes exp(logit - lse) = 0 in the backward pass.
    lse_blk = jnp.where(has_key, m + jnp.log(jnp.where(has_key, l, 1.0)), jnp.inf)
    return (jax.lax.dynamic_update_slice_in_dim(out, out_blk, qi * bq, axis=3),
            jax.lax.dynamic_update_slice_in_dim(lse, lse_blk, qi * bq, axis=3))

  return jax.lax.fori_loop(0, lq // bq, query_block, (out, lse))


def _per_head(fn, q, k, v, k_valid, slopes, q_like, into, layout):
  """Runs fn on one query head at a time, updating `into` in place.

  fn takes the usual [b, hkv, g, L, ...] layout with b = hkv = g = 1, then
  slopes (or None), the q_like arrays (laid out like q's leading axes) and
  the `into` arrays, and returns the new `into`. `layout` says per `into`
  array whether it is laid out like q ("q") or like k ("k"): a key/value
  head's array gathers its G query heads' (GQA) with no per-head copies.
  """
  b, hkv, g = q.shape[:3]

  def one(i, into):
    bi, hi, gi = i // (hkv * g), (i // g) % hkv, i % g
    corner = {"q": (bi, hi, gi), "k": (bi, hi)}
    pick = lambda x, kind: jax.lax.dynamic_slice(
        x, corner[kind] + (0,) * (x.ndim - len(corner[kind])),
        (1,) * len(corner[kind]) + x.shape[len(corner[kind]):])
    put = lambda x, y, kind: jax.lax.dynamic_update_slice(
        x, y, corner[kind] + (0,) * (x.ndim - len(corner[kind])))
    valid = None if k_valid is None else jax.lax.dynamic_slice_in_dim(k_valid, bi, 1, 0)
    slope = None if slopes is None else pick(slopes, "q")
    new = fn(pick(q, "q"), pick(k, "k"), pick(v, "k"), valid, slope,
             *(pick(x, "q") for x in q_like), *(pick(x, kind) for x, kind in zip(into, layout)))
    return tuple(put(x, y, kind) for x, y, kind in zip(into, new, layout))

  return jax.lax.fori_loop(0, b * hkv * g, one, tuple(into))


def _fresh(shape, value, after):
  """A float32 array of `value`, made once `after` is: XLA would otherwise
  share one constant broadcast between the forward and the backward pass and
  hold it from the program's start to its end (the backward's zeros come
  after the forward's lse)."""
  value, _ = jax.lax.optimization_barrier((jnp.float32(value), after))
  return jnp.broadcast_to(value, shape)


def forward_partials(q, k, v, kv_mask, slopes, pos, causal, blocks, per_head, into=None):
  """(out float32 [B, Hkv, G, Lq, D], lse [B, Hkv, G, Lq]) in the kernel
  layout (see `kernel_layout`) of this call's keys merged with `into`, the
  (out, lse) of keys seen before (None: none); lse is +inf for a row with no key.

  The pieces of `_flash`, also used by ring attention (context.py), which
  merges each key shard into the rows' running output in place.
  """
  bq, bk = blocks
  lq = q.shape[3]
  lq_pad = common.round_up(lq, bq)
  q_pad = common.pad_axis(q, 3, lq_pad)
  k_pad, v_pad, k_valid = _padded_keys(k, v, kv_mask, bk)
  if into is None:
    into = _fresh(q.shape, 0.0, q), _fresh(q.shape[:-1], jnp.inf, q)
  out, lse = common.pad_axis(into[0], 3, lq_pad), common.pad_axis(into[1], 3, lq_pad, jnp.inf)
  forward = lambda *a: _forward(*a, causal, bq, bk, pos)
  if per_head:
    out, lse = _per_head(forward, q_pad, k_pad, v_pad, k_valid, slopes, (), (out, lse), "qq")
  else:
    out, lse = forward(q_pad, k_pad, v_pad, k_valid, slopes, out, lse)
  return out[:, :, :, :lq], lse[:, :, :, :lq]


def backward_partials(q, k, v, kv_mask, slopes, pos, out, lse, d_out, d_lse, causal, blocks,
                      per_head, into=None):
  """(dq, dk, dv) float32 of one call, given the rows' final out and lse
  (+inf for a row with no key) and their cotangents, added to `into` (float32
  arrays shaped like q, k and v; None: zeros).

  Under ring attention out and lse are those of all key shards merged, so
  each shard's probabilities exp(logit - lse) are the final ones, and `into`
  holds the gradients gathered so far: the kernel adds to them in place
  rather than returning a second set to be added.
  """
  bq, bk = blocks
  lq, lk = q.shape[3], k.shape[2]
  # Padded query rows get lse = +inf (so P = 0) and zero d_out: they add nothing.
  lq_pad = common.round_up(lq, bq)
  q_pad, out, d_out, d_lse = (common.pad_axis(x, 3, lq_pad) for x in (q, out, d_out, d_lse))
  lse = common.pad_axis(lse, 3, lq_pad, value=jnp.inf)
  k_pad, v_pad, k_valid = _padded_keys(k, v, kv_mask, bk)
  if into is None:
    into = _fresh(q.shape, 0.0, lse), _fresh(k.shape, 0.0, lse), _fresh(v.shape, 0.0, lse)
  dq, dk, dv = into
  dq = common.pad_axis(dq, 3, lq_pad)
  dk, dv = (common.pad_axis(x, 2, k_pad.shape[2]) for x in (dk, dv))
  backward = lambda *a: _backward(*a, causal, bq, bk, pos)
  if per_head:
    dq, dk, dv = _per_head(backward, q_pad, k_pad, v_pad, k_valid, slopes,
                           (out, lse, d_out, d_lse), (dq, dk, dv), "qkk")
  else:
    dq, dk, dv = backward(q_pad, k_pad, v_pad, k_valid, slopes, out, lse, d_out, d_lse, dq, dk,
                          dv)
  return dq[:, :, :, :lq], dk[:, :, :lk], dv[:, :, :lk]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _flash(q, k, v, kv_mask, slopes, pos, causal, fwd_blocks, bwd_blocks, per_head):
  return _flash_fwd(q, k, v, kv_mask, slopes, pos, causal, fwd_blocks, bwd_blocks, per_head)[0]


# Each pass pads the unpadded inputs to its own block sizes, so the forward
# and backward block sizes need not divide each other.
def _flash_fwd(q, k, v, kv_mask, slopes, pos, causal, fwd_blocks, bwd_blocks, per_head):
  del bwd_blocks
  out, lse = forward_partials(q, k, v, kv_mask, slopes, pos, causal, fwd_blocks, per_head)
  # float32 out: the caller rounds once (strided merges it with its band first).
  return (out, lse), (q, k, v, kv_mask, slopes, pos, out, lse)


def _flash_bwd(causal, fwd_blocks, bwd_blocks, per_head, residuals, cotangents):
  del fwd_blocks
  q, k, v, kv_mask, slopes, pos, out, lse = residuals
  d_out, d_lse = cotangents
  dq, dk, dv = backward_partials(q, k, v, kv_mask, slopes, pos, out, lse, d_out, d_lse, causal,
                                 bwd_blocks, per_head)
  # The slopes are a stop_gradient constant (see attention_with_lse): zero cotangent.
  d_slopes = None if slopes is None else jnp.zeros_like(slopes)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, d_slopes, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _backward(q, k, v, k_valid, slopes, out, lse, d_out, d_lse, dq, dk, dv, causal, bq, bk,
              pos=Positions()):
  """dq, dk, dv (float32) plus this call's gradients, streaming key blocks
  (outer) and query blocks."""
  b, hkv, g, lq, d = q.shape
  nq, nk = lq // bq, k.shape[2] // bk
  # dlogits_ij = P_ij (dP_ij - delta_i + dlse_i), where delta_i = sum_d dO_i O_i
  # = sum_j P_ij dP_ij is the softmax backward's row term and dlse_i P_ij is
  # the lse output's own gradient (dlse/dlogits = P).
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  delta = delta - jnp.where(jnp.isfinite(lse), d_lse, 0.0)

  def key_block(kj, carry):
    dq, dk, dv = carry
    k_blk = jax.lax.dynamic_slice_in_dim(k, kj * bk, bk, axis=2)
    v_blk = jax.lax.dynamic_slice_in_dim(v, kj * bk, bk, axis=2)

    def query_block(qi, inner):
      dq, dk_blk, dv_blk = inner
      q_blk = jax.lax.dynamic_slice_in_dim(q, qi * bq, bq, axis=3)
      do_blk = jax.lax.dynamic_slice_in_dim(d_out, qi * bq, bq, axis=3)
      lse_blk = jax.lax.dynamic_slice_in_dim(lse, qi * bq, bq, axis=3)
      delta_blk = jax.lax.dynamic_slice_in_dim(delta, qi * bq, bq, axis=3)
      logits = _block_logits(q_blk, k_blk, k_valid, slopes, causal, qi, kj, bq, bk, pos)
      p = jnp.exp(logits - lse_blk[..., None])
      dv_blk += jnp.einsum("bhgqk,bhgqd->bhkd", p.astype(d_out.dtype), do_blk,
                           preferred_element_type=jnp.float32)
      dp = jnp.einsum("bhgqd,bhkd->bhgqk", do_blk, v_blk, preferred_element_type=jnp.float32)
      ds = (p * (dp - delta_blk[..., None])).astype(q.dtype)
      dk_blk += jnp.einsum("bhgqk,bhgqd->bhkd", ds, q_blk, preferred_element_type=jnp.float32)
      dq_blk = jax.lax.dynamic_slice_in_dim(dq, qi * bq, bq, axis=3)
      dq_blk += jnp.einsum("bhgqk,bhkd->bhgqd", ds, k_blk, preferred_element_type=jnp.float32)
      return jax.lax.dynamic_update_slice_in_dim(dq, dq_blk, qi * bq, axis=3), dk_blk, dv_blk

    first_q = _first_query_block(kj, causal, bq, bk, nq, pos)  # earlier ones never see it
    dk_blk = jax.lax.dynamic_slice_in_dim(dk, kj * bk, bk, axis=2)
    dv_blk = jax.lax.dynamic_slice_in_dim(dv, kj * bk, bk, axis=2)
    dq, dk_blk, dv_blk = jax.lax.fori_loop(first_q, nq, query_block, (dq, dk_blk, dv_blk))
    dk = jax.lax.dynamic_update_slice_in_dim(dk, dk_blk, kj * bk, axis=2)
    dv = jax.lax.dynamic_update_slice_in_dim(dv, dv_blk, kj * bk, axis=2)
    return dq, dk, dv

  return jax.lax.fori_loop(0, nk, key_block, (dq, dk, dv))


# ---------------------------------------------------------------------------
# Context parallelism (context.py): one shard of the sequence per device.

@context.stripes
def context_all_gather(query, key, value, *, causal=False, kv_mask=None, axis,
                       alibi_slopes=None, variant="blockwise", implementation="auto",
                       **blocks):
  """Exact softmax attention of this shard's queries over the whole sequence,
  gathered; causal queries are striped, so every shard does equal work.
  `blocks` are blockwise's block options. Memory O(L) keys a device."""
  kernels.check_context_implementation(variant, implementation)
  n, i = context.size(axis), jax.lax.axis_index(axis)
  rows = query.shape[1]
  gather = lambda x: None if x is None else jax.lax.all_gather(x, axis, axis=1, tiled=True)
  key, value, kv_mask = gather(key), gather(value), gather(kv_mask)
  if causal:
    positions = Positions(i, n)
    query = context.stripe(query, axis)
  else:
    positions = Positions(i * rows, 1)
  out, _ = attention_with_lse(query, key, value, causal=causal, kv_mask=kv_mask,
                              alibi_slopes=alibi_slopes, variant=variant, positions=positions,
                              **blocks)
  return context.unstripe(out, axis) if causal else out


@context.stripes
@context.overlaps
def context_ring(query, key, value, *, causal=False, kv_mask=None, axis, overlap=None,
                 alibi_slopes=None, variant="blockwise", block_q=None, block_k=512,
                 bwd_block_q=512, bwd_block_k=256, sequential_heads=None,
                 implementation="auto"):
  """Ring attention (Liu et al. 2023): exact softmax attention of this shard's
  queries, the key and value shards passed around the axis one step at a
  time and merged by their log-sum-exp. Its VJP passes them around again with
  their gradients, so both passes hold O(L / n) rows a device. Causal
  attention runs striped (see context.py). `overlap` (None: off on CPU,
  whose collectives are copies with nothing to hide behind; on elsewhere)
  sends each step's keys on while computing with them, at about two
  shard-sized arrays more a device (see `_ring`). `implementation`: each
  step's kernel, "auto" (splash on TPU where it serves, else the XLA code),
  "xla" or "pallas_tpu" (kernels.ring_step)."""
  s = common.check_inputs(variant, query, key, value, kv_mask)
  slopes = common.check_alibi_slopes(variant, alibi_slopes, s.heads)
  splash = kernels.ring_step(variant, implementation, s, query.dtype, causal=causal,
                             kv_mask=kv_mask, options=dict(alibi_slopes=alibi_slopes))
  fwd_blocks, bwd_blocks, per_head = _resolve_blocks(
      variant, s, causal, block_q, block_k, bwd_block_q, bwd_block_k, sequential_heads)
  if causal:
    query, key, value = (context.stripe(x, axis) for x in (query, key, value))
    kv_mask = None if kv_mask is None else context.stripe(kv_mask, axis)
  q, k, v, slopes = kernel_layout(query, key, value, slopes, s)
  if overlap is None:
    overlap = jax.default_backend() != "cpu"
  out = _ring(q, k, v, kv_mask, slopes, causal, axis, fwd_blocks, bwd_blocks, per_head,
              bool(overlap), splash)
  out = out.transpose(0, 3, 1, 2, 4).reshape(s.batch, s.q_len, s.heads, s.head_dim)
  out = out.astype(query.dtype)
  return context.unstripe(out, axis) if causal else out


def _shard_positions(axis, i, j, rows, causal):
  """Positions of shard i's queries and shard j's keys: striped when causal."""
  n = context.size(axis)
  if causal:
    return Positions(i, n, j, n)
  return Positions(i * rows, 1, j * rows, 1)


def _rotate_all(xs, axis):
  return tuple(None if x is None else context.rotate(x, axis) for x in xs)


# Two schedules of the same ring (`overlap`), one step per key shard:
#   overlap=True   each step sends its keys and values on while it computes
#                  with them (a fori_loop), so the transfer hides behind the
#                  block; a device then holds the shard it computes with and
#                  the one arriving: about eight shard-sized arrays in all.
#   overlap=False  each step receives, then computes (unrolled, the order held
#                  by optimization barriers: XLA's while loop would keep a
#                  second buffer of every carried array anyway); about six,
#                  one device's count, but the transfers add to the time.
# Each step's block is the XLA code here (splash None) or splash (splash_ring.py;
# `splash` says whether in interpret mode).
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9, 10, 11))
def _ring(q, k, v, kv_mask, slopes, causal, axis, fwd_blocks, bwd_blocks, per_head, overlap,
          splash):
  return _ring_fwd(q, k, v, kv_mask, slopes, causal, axis, fwd_blocks, bwd_blocks, per_head,
                   overlap, splash)[0]


def _later(t, j, i):
  """Whether key shard j comes after query shard i in the stripes (step 0's is i's own)."""
  return False if isinstance(t, int) and t == 0 else j > i


def _ring_fwd(q, k, v, kv_mask, slopes, causal, axis, fwd_blocks, bwd_blocks, per_head, overlap,
              splash):
  del bwd_blocks
  n, i, rows = context.size(axis), jax.lax.axis_index(axis), k.shape[2]

  def block(t, k_t, v_t, mask_t, into):  # step t computes with shard i - t's keys
    j = (i - t) % n
    if splash is not None:
      return splash_ring.forward(q, k_t, v_t, mask_t, causal=causal, later=_later(t, j, i),
                                 into=into, interpret=splash)
    pos = _shard_positions(axis, i, j, rows, causal)
    return forward_partials(q, k_t, v_t, mask_t, slopes, pos, causal, fwd_blocks, per_head, into)

  if overlap:
    def step(t, carry):
      k_t, v_t, mask_t, out, lse = carry
      ahead = _rotate_all((k_t, v_t, mask_t), axis)  # needs nothing from this step's block
      return (*ahead, *block(t, k_t, v_t, mask_t, (out, lse)))

    # n sends, the last one spare, so the keys end at home, as the backward starts.
    init = (k, v, kv_mask, _fresh(q.shape, 0.0, q), _fresh(q.shape[:-1], jnp.inf, q))
    k, v, kv_mask, out, lse = jax.lax.fori_loop(0, n, step, init)
  else:
    out, lse = block(0, k, v, kv_mask, None)
    for t in range(1, n):
      k, v, kv_mask, out, lse = jax.lax.optimization_barrier((k, v, kv_mask, out, lse))
      k, v, kv_mask = _rotate_all((k, v, kv_mask), axis)
      out, lse = block(t, k, v, kv_mask, (out, lse))
    # The residual keys are the shard the ring ended on, i + 1's: a copy of
    # this device's own kept for the backward would be one array more.
  return out, (q, k, v, kv_mask, slopes, out, lse)


def _ring_bwd(causal, axis, fwd_blocks, bwd_blocks, per_head, overlap, splash, residuals, d_out):
  del fwd_blocks
  q, k, v, kv_mask, slopes, out, lse = residuals
  n, i, rows = context.size(axis), jax.lax.axis_index(axis), k.shape[2]
  d_lse = jnp.zeros_like(lse)
  first = i if overlap else i + 1  # the key shard the forward ended on
  # Not before the forward has ended: XLA would move the first rotation
  # there, and hold its result through the forward.
  k, v, kv_mask, _ = jax.lax.optimization_barrier((k, v, kv_mask, lse))

  def block(t, k_t, v_t, mask_t, into):  # step t: shard first - t's keys and their gradient
    j = (first - t) % n
    if splash is not None:
      return splash_ring.backward(q, k_t, v_t, mask_t, causal=causal, later=j > i, out=out,
                                  lse=lse, d_out=d_out, into=into, interpret=splash)
    pos = _shard_positions(axis, i, j, rows, causal)
    return backward_partials(q, k_t, v_t, mask_t, slopes, pos, out, lse, d_out, d_lse, causal,
                             bwd_blocks, per_head, into)

  if overlap:
    def step(t, carry):
      k_t, v_t, mask_t, dk_t, dv_t, dq = carry
      ahead = _rotate_all((k_t, v_t, mask_t), axis)
      dq, dk_t, dv_t = block(t, k_t, v_t, mask_t, (dq, dk_t, dv_t))
      # A key shard's gradient travels with it, once this step has added to it.
      return (*ahead, *_rotate_all((dk_t, dv_t), axis), dq)

    zeros = (_fresh(k.shape, 0.0, lse), _fresh(v.shape, 0.0, lse), _fresh(q.shape, 0.0, lse))
    carry = jax.lax.fori_loop(0, n, step, (k, v, kv_mask, *zeros))
    dk, dv, dq = carry[3:]  # n sends: each gradient is home
  else:
    dq, dk, dv = block(0, k, v, kv_mask, None)
    for t in range(1, n):
      k, v, kv_mask, dk, dv, dq = jax.lax.optimization_barrier((k, v, kv_mask, dk, dv, dq))
      k, v, kv_mask, dk, dv = _rotate_all((k, v, kv_mask, dk, dv), axis)
      dq, dk, dv = block(t, k, v, kv_mask, (dq, dk, dv))
    # This device holds shard i + 2 - n's gradient (the ring's last): it goes home.
    dk, dv = (context.rotate(x, axis, hops=2) for x in (dk, dv))
  d_slopes = None if slopes is None else jnp.zeros_like(slopes)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, d_slopes


_ring.defvjp(_ring_fwd, _ring_bwd)
