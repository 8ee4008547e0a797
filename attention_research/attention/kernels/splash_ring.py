"""Splash attention as ring attention's per-shard step (blockwise.context_ring).

Each step of the ring attends this shard's queries to one travelling key
shard and merges the result into the rows' running output by log-sum-exp.

  forward   splash's public kernel with `save_residuals=True`, which returns
            the shard's log-sum-exp beside its output; merged here.
  backward  the ring needs each shard's probabilities at the merged
            log-sum-exp, exp(logit - lse of every shard), while splash's own
            VJP recomputes them at that shard's alone. Splash's backward
            kernels take the output and log-sum-exp as residuals, so they are
            called with the merged ones: each shard's dq, dk and dv exactly.
            That function is private to jax (`_splash_attention_bwd`, what
            splash's VJP calls; the same signature from jax 0.10.2 to 0.12),
            so this is the one place that knows it.

Layout: the ring's (blockwise.kernel_layout): q [B, Hkv, G, L, D], scaled by
1/sqrt(D) already (splash does not scale), k and v [B, Hkv, L, D]; splash's,
per example, is [H, L, D] with query head h reading key head h // G: q is a
reshape. Rows are padded to a multiple of 128 (splash's blocks); padded and
masked keys get segment id 1 (the queries' is 0), padded query rows are cut.

The causal mask of two striped shards (context.py): shard i's row a sits at
position i + n a and shard j's row b at j + n b, so the key is seen where
b <= a when j <= i and where b < a when j > i: splash's CausalMask with
offset 0 or -1, chosen by lax.cond, since j is traced.

A row with no key (the first of every shard after this one's, and masked
rows) gets an exact zero and a log-sum-exp of about -1e30 from splash's
`sinks` (see splash.py); here that is +inf, the ring's mark of a row with no
key, whose weight in the merge and probabilities in the backward are 0.
"""

import jax
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
import jax.numpy as jnp

from attention_research.attention import common
from attention_research.attention.kernels import splash


def forward(q, k, v, kv_mask, *, causal, later, into, interpret):
  """(out float32 [B, Hkv, G, Lq, D], lse [B, Hkv, G, Lq], +inf where a row has no key)
  of q over this key shard, merged with `into` (the same pair for the shards seen
  before, or None). `later`: whether the key shard comes after the query shard in
  the stripes (a traced bool; only read when causal)."""
  b, hkv, g, lq, d = q.shape
  qs, ks, vs, ids = _splash_inputs(q, k, v, kv_mask)
  sinks = jnp.full((hkv * g,), splash.SINK, jnp.float32)

  def run(offset):
    kernel = _kernel(causal, offset, qs.shape[2], ks.shape[2], hkv * g, True, interpret)
    return jax.vmap(lambda q, k, v, ids: kernel(q, k, v, ids, sinks))(qs, ks, vs, ids)

  out, (lse,) = _by_mask(run, causal, later)
  out = out[:, :, :lq].astype(jnp.float32).reshape(b, hkv, g, lq, d)
  lse = lse[:, :, :lq].reshape(b, hkv, g, lq)
  lse = jnp.where(lse > 0.5 * splash.SINK, lse, jnp.inf)
  return (out, lse) if into is None else merge(into, (out, lse))


def backward(q, k, v, kv_mask, *, causal, later, out, lse, d_out, into, interpret):
  """(dq, dk, dv) float32 of this key shard, given the rows' merged out and lse (+inf
  where a row has no key) and out's cotangent, added to `into` (None: zeros)."""
  b, hkv, g, lq, d = q.shape
  lk = k.shape[2]
  qs, ks, vs, ids = _splash_inputs(q, k, v, kv_mask)
  rows = qs.shape[2]
  heads_first = lambda x: common.pad_axis(x.reshape(b, hkv * g, lq, *x.shape[4:]), 2, rows)
  o, do = heads_first(out), heads_first(d_out.astype(q.dtype))
  l = common.pad_axis(lse.reshape(b, hkv * g, lq), 2, rows, value=jnp.inf)
  sinks = jnp.full((hkv * g,), splash.SINK, jnp.float32)

  def run(offset):
    kernel = _kernel(causal, offset, rows, ks.shape[2], hkv * g, False, interpret)
    kw = kernel.kwargs

    def one(q, k, v, ids, o, l, do):
      residuals = (q, k, v, ids, sinks, o, l, kernel.dq_mask_info, kernel.dkv_mask_info)
      grads = sk._splash_attention_bwd(  # pylint: disable=protected-access
          False, kw["mask_value"], kw["is_mqa"], kw["block_sizes"], None, kw["mask_function"],
          kw["attn_logits_soft_cap"], kw["interpret"], residuals, do)
      return grads[3:6]   # the cotangents of (q, k, v), after the three mask infos
    return jax.vmap(one)(qs, ks, vs, ids, o, l, do)

  dq, dk, dv = _by_mask(run, causal, later)
  dq = dq[:, :, :lq].astype(jnp.float32).reshape(q.shape)
  dk, dv = (x[:, :, :lk].astype(jnp.float32) for x in (dk, dv))
  if into is None:
    return dq, dk, dv
  return into[0] + dq, into[1] + dk, into[2] + dv


def merge(a, b):
  """Two (out, lse) pairs of the same rows over disjoint keys, as one."""
  (out_a, lse_a), (out_b, lse_b) = a, b
  seen_a, seen_b = jnp.isfinite(lse_a), jnp.isfinite(lse_b)
  m = jnp.maximum(jnp.where(seen_a, lse_a, -jnp.inf), jnp.where(seen_b, lse_b, -jnp.inf))
  safe = jnp.where(jnp.isfinite(m), m, 0.0)
  w_a = jnp.where(seen_a, jnp.exp(jnp.where(seen_a, lse_a, 0.0) - safe), 0.0)
  w_b = jnp.where(seen_b, jnp.exp(jnp.where(seen_b, lse_b, 0.0) - safe), 0.0)
  total = w_a + w_b
  has_key = total > 0
  norm = jnp.where(has_key, total, 1.0)
  out = (w_a[..., None] * out_a + w_b[..., None] * out_b) / norm[..., None]
  return out, jnp.where(has_key, safe + jnp.log(norm), jnp.inf)


def _splash_inputs(q, k, v, kv_mask):
  """q [B, H, Lq', D], k and v [B, Hkv, Lk', D] padded to splash's blocks, and the
  segment ids that mask the padded and masked keys."""
  b, hkv, g, lq, d = q.shape
  lk = k.shape[2]
  rows, keys = common.round_up(lq, splash.LANES), common.round_up(lk, splash.LANES)
  qs = common.pad_axis(q.reshape(b, hkv * g, lq, d), 2, rows)
  ks, vs = (common.pad_axis(x, 2, keys) for x in (k, v))
  real = jnp.ones((b, lk), bool) if kv_mask is None else kv_mask
  real = common.pad_axis(real, 1, keys, value=False)
  ids = sa.SegmentIds(q=jnp.zeros((b, rows), jnp.int32), kv=jnp.where(real, 0, 1).astype(jnp.int32))
  return qs, ks, vs, ids


def _kernel(causal, offset, rows, keys, heads, save_residuals, interpret):
  shape = (rows, keys)
  mask = sa.CausalMask(shape, offset=offset) if causal else sa.FullMask(shape)
  bq, bk = splash.block_size(rows), splash.block_size(keys)
  blocks = sa.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                         block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  return sa.make_splash_mha(sa.MultiHeadMask([mask] * heads), block_sizes=blocks, head_shards=1,
                            q_seq_shards=1, save_residuals=save_residuals, interpret=interpret)


def _by_mask(run, causal, later):
  """run(offset) under the key shard's causal mask (offset 0, or -1 for a later
  shard), or run(None) without one."""
  if not causal:
    return run(None)
  if isinstance(later, bool):
    return run(-1 if later else 0)
  return jax.lax.cond(later, lambda: run(-1), lambda: run(0))
