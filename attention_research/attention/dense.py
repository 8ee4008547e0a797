"""Dense softmax attention (Vaswani et al. 2017): the reference every exact
variant is measured against. O(Lq * Lk) time and memory. Optionally with the
ALiBi bias of Press et al. 2022 ("Train Short, Test Long"). `implementation`
hands a call to a vendor kernel (kernels/choose.py).
"""

import functools

import jax.numpy as jnp

from attention_research.attention import blockwise
from attention_research.attention import common
from attention_research.attention import kernels


def dense(query, key, value, *, causal=False, kv_mask=None, mask=None, alibi_slopes=None,
          implementation="auto"):
  """softmax(q k^T / sqrt(D) + bias) v with float32 logits and accumulation.

  Args:
    query: [B, Lq, H, D].
    key, value: [B, Lk, Hkv, D], H % Hkv == 0.
    causal: query i sees key j only if j <= i (top-left aligned, as in
      `jax.nn.dot_product_attention`).
    kv_mask: bool [B, Lk], True where the key is a real token.
    mask: bool, broadcastable to [B, H, Lq, Lk]; True where attention is
      allowed. Combined with `causal` and `kv_mask` by AND.
    alibi_slopes: None (no bias) or float [H], one slope per query head: the
      logit of query i, key j in head h gets -alibi_slopes[h] * |i - j|
      (ALiBi), positions top-left aligned (i in [0, Lq), j in [0, Lk)). Under
      `causal` that is the paper's -slope * (i - j); without it the distance
      is symmetric, as in bidirectional uses of ALiBi. A constant: no gradient
      flows into it. `attention.alibi_slopes(H)` gives the paper's slopes.
    implementation: "auto", "xla" (the code below), "pallas_tpu",
      "pallas_gpu" or "cudnn": who computes the call (kernels/choose.py).
      Splash (pallas_tpu) serves a `mask` only as a concrete NumPy pattern
      [Lq, Lk] or [H, Lq, Lk]; no kernel serves `alibi_slopes`.

  Returns:
    [B, Lq, H, D] in query's dtype; rows with no allowed key are zero.
  """
  s = common.check_inputs("dense", query, key, value, kv_mask)
  slopes = common.check_alibi_slopes("dense", alibi_slopes, s.heads)
  if mask is not None:
    full = (s.batch, s.heads, s.q_len, s.k_len)
    checked = jnp.asarray(mask)  # `mask` itself goes to the kernel: splash needs it concrete
    if checked.ndim > 4 or any(m not in (1, f) for m, f in zip(checked.shape[::-1], full[::-1])):
      raise ValueError(
          f"dense: `mask` of shape {checked.shape} does not broadcast to "
          f"[batch, heads, q_len, k_len] = {full}")
    if checked.dtype != jnp.bool_:
      raise ValueError(f"dense: `mask` must be bool (True = attend), got {checked.dtype}")
  kernel = kernels.kernel_for("dense", implementation, s, query.dtype, causal=causal,
                              kv_mask=kv_mask, options=dict(mask=mask, alibi_slopes=alibi_slopes))
  if kernel is not None:
    return kernel(query, key, value, kv_mask, xla=functools.partial(
        dense, causal=causal, mask=mask, alibi_slopes=alibi_slopes, implementation="xla"))
  allowed = jnp.ones((1, 1, 1, 1), bool)  # [B, H, Lq, Lk] after broadcasting
  if mask is not None:
    mask = jnp.asarray(mask)
    allowed = allowed & mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  if causal:
    allowed = allowed & jnp.tril(jnp.ones((s.q_len, s.k_len), bool))
  if kv_mask is not None:
    allowed = allowed & kv_mask[:, None, None, :]
  allowed = jnp.broadcast_to(allowed, (allowed.shape[0], s.heads) + allowed.shape[2:])
  allowed = allowed.reshape(allowed.shape[0], s.kv_heads, s.groups, *allowed.shape[2:])

  q = query.reshape(s.batch, s.q_len, s.kv_heads, s.groups, s.head_dim)
  logits = jnp.einsum("bqhgd,bkhd->bhgqk", q, key, preferred_element_type=jnp.float32)
  logits = logits * common.default_scale(s.head_dim)
  if slopes is not None:
    logits = logits + common.alibi_bias(slopes.reshape(s.kv_heads, s.groups, 1, 1),
                                        jnp.arange(s.q_len)[:, None], jnp.arange(s.k_len))
  m, p = common.masked_softmax_terms(logits, allowed)
  acc = jnp.einsum("bhgqk,bkhd->bhgqd", p.astype(value.dtype), value,
                   preferred_element_type=jnp.float32)
  out = common.finalize(common.Partials(m, p.sum(-1), acc), query.dtype)
  return out.transpose(0, 3, 1, 2, 4).reshape(s.batch, s.q_len, s.heads, s.head_dim)


def flops_per_query(seq_len, *, heads, kv_heads, head_dim, causal, **options) -> float:
  """Forward FLOPs per query token of softmax attention over every key
  (blockwise computes the same ones): L keys, (L + 1) / 2 on average when
  causal. The cost `register` records for `dense` and `blockwise`."""
  del kv_heads, options
  keys = (seq_len + 1) / 2 if causal else seq_len
  return common.softmax_flops_per_query(keys, seq_len, heads, head_dim)


def _without_mask(strategy):
  """`strategy`'s blockwise per-shard function for dense (context.py): the
  same softmax, so dense under context parallelism is blockwise's ring or
  gather. A `mask` is [Lq, Lk], which no shard holds."""
  def per_shard(query, key, value, *, mask=None, **kwargs):
    # `implementation` goes on to the strategy, which refuses the kernels.
    if mask is not None:
      raise ValueError("dense: `mask` is not supported under context parallelism (no shard "
                       "holds the [Lq, Lk] pattern); use causal, kv_mask or a sparse variant")
    return strategy(query, key, value, variant="dense", **kwargs)
  per_shard.stripes = strategy.stripes
  per_shard.overlaps = getattr(strategy, "overlaps", False)
  return per_shard


context_ring = _without_mask(blockwise.context_ring)
context_all_gather = _without_mask(blockwise.context_all_gather)
