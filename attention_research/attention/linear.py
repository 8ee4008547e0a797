"""Linear-cost attention: kernel feature maps instead of the softmax.

Both variants here are APPROXIMATE with respect to softmax attention: they
compute out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j), which
never forms the Lq x Lk matrix.

- `linear`: phi = elu + 1 (or relu), Katharopoulos et al. 2020, "Transformers
  are RNNs". No 1/sqrt(D) scaling, as in the paper.
- `performer`: FAVOR+ positive orthogonal random features, Choromanski et al.
  2020, "Rethinking Attention with Performers": an unbiased estimate of
  exp(q.k / sqrt(D)), so it approaches softmax attention as features grow.

Causal attention uses chunked prefix sums: within a chunk the (small) masked
quadratic form, across chunks an exclusive cumulative sum of per-chunk
[D, D] states, so memory is O(L / chunk x D^2), never [L, D, D].
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from attention_research.attention import common


def _weighted_sum(phi_q, phi_k, value, s, causal, chunk):
  """sum_j phi_q_i.phi_k_j v_j / sum_j phi_q_i.phi_k_j, as [B, Lq, H, D] float32.

  phi_q: [B, Hkv, G, Lq, F]; phi_k: [B, Hkv, Lk, F], zero for masked keys.
  Heads lead and length is second to last, so each einsum is a plain batched
  matmul with no transposes of L-sized arrays (memory-bound work here). The
  values carry an extra column of ones, so one matmul gives the numerator
  and, in that column, the denominator: a separate sum of phi_k and a
  matrix-vector product would each be another pass over L-sized arrays.
  """
  v = value.astype(jnp.float32).transpose(0, 2, 1, 3)  # [B, Hkv, Lk, D]
  v = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)
  if not causal:
    state = jnp.einsum("bhkf,bhkd->bhfd", phi_k, v)
    num = jnp.einsum("bhgqf,bhfd->bhgqd", phi_q, state)
  else:
    # Causal is top-left aligned (key j <= query i), so pad both sides to a
    # common length; padded keys have phi_k = 0 and padded queries are dropped.
    c = min(chunk, max(s.q_len, s.k_len))
    length = common.round_up(max(s.q_len, s.k_len), c)
    n = length // c
    pq = common.pad_axis(phi_q, 3, length).reshape(*phi_q.shape[:3], n, c, phi_q.shape[-1])
    pk = common.pad_axis(phi_k, 2, length).reshape(*phi_k.shape[:2], n, c, phi_k.shape[-1])
    pv = common.pad_axis(v, 2, length).reshape(*v.shape[:2], n, c, v.shape[-1])
    scores = jnp.einsum("bhgnqf,bhnkf->bhgnqk", pq, pk) * jnp.tril(jnp.ones((c, c)))
    states = jnp.einsum("bhnkf,bhnkd->bhnfd", pk, pv)
    states = _exclusive_cumsum(states, axis=2)            # keys of earlier chunks only
    num = (jnp.einsum("bhgnqk,bhnkd->bhgnqd", scores, pv)
           + jnp.einsum("bhgnqf,bhnfd->bhgnqd", pq, states))
    num = num.reshape(*num.shape[:3], length, num.shape[-1])[:, :, :, :s.q_len]
  num, den = num[..., :-1], num[..., -1]
  # The weights are >= 0, so den = 0 only when every weight is 0 (no key):
  # such a row is defined as zeros.
  has_key = den > 0
  out = jnp.where(has_key[..., None], num / jnp.where(has_key, den, 1.0)[..., None], 0.0)
  return out.transpose(0, 3, 1, 2, 4).reshape(s.batch, s.q_len, s.heads, s.head_dim)


def _exclusive_cumsum(x, axis):
  """Sum of the entries before each one (shifting, not cumsum(x) - x, which
  cancels badly when one chunk outweighs all before it)."""
  shifted = jax.lax.slice_in_dim(x, 0, x.shape[axis] - 1, axis=axis)
  widths = [(0, 0)] * x.ndim
  widths[axis] = (1, 0)
  return jnp.cumsum(jnp.pad(shifted, widths), axis=axis)


def _grouped(query, s):
  """[B, Lq, H, D] -> [B, Hkv, G, Lq, D] float32."""
  q = query.reshape(s.batch, s.q_len, s.kv_heads, s.groups, s.head_dim)
  return q.transpose(0, 2, 3, 1, 4).astype(jnp.float32)


def _keys(key):
  """[B, Lk, Hkv, D] -> [B, Hkv, Lk, D] float32."""
  return key.transpose(0, 2, 1, 3).astype(jnp.float32)


def _masked_keys(phi_k, kv_mask):
  return phi_k if kv_mask is None else phi_k * kv_mask[:, None, :, None]


def linear(query, key, value, *, causal=False, kv_mask=None, feature_map="elu", chunk_size=64):
  """Linear attention (Katharopoulos et al. 2020). Approximate: not softmax.

  Args:
    feature_map: "elu" (elu(x) + 1, the paper's) or "relu".
    chunk_size: chunk length of the causal prefix sums.
  """
  s = common.check_inputs("linear", query, key, value, kv_mask)
  common.one_of("linear", "feature_map", feature_map, ("elu", "relu"))
  chunk = common.positive_int("linear", "chunk_size", chunk_size)
  phi = (lambda x: jax.nn.elu(x) + 1.0) if feature_map == "elu" else jax.nn.relu
  phi_q = phi(_grouped(query, s))
  phi_k = _masked_keys(phi(_keys(key)), kv_mask)
  return _weighted_sum(phi_q, phi_k, value, s, causal, chunk).astype(query.dtype)


def performer_projection(head_dim, num_features, feature_key=None):
  """FAVOR+ random features W [num_features, head_dim], float32.

  Rows come in blocks of head_dim that are exactly orthogonal (QR of a
  Gaussian matrix, with R's diagonal made positive so Q is Haar-distributed),
  each row rescaled to the norm of an independent Gaussian vector, so every
  row is marginally N(0, I) (Choromanski et al. 2020, Sec. 2.4).

  Args:
    feature_key: None (seed 0) or an int seed: drawn once with NumPy's
      generator and cached, a constant of the computation; or a jax PRNG key
      (may be traced, e.g. a new key per step to redraw features): drawn with
      jax.random. The two kinds give different draws for the same number.
  """
  common.positive_int("performer", "num_features", num_features)
  if feature_key is None or isinstance(feature_key, (int, np.integer)):
    seed = common.non_negative_int("performer", "feature_key", 0 if feature_key is None else feature_key)
    return jnp.asarray(_numpy_projection(head_dim, num_features, seed))
  if not jnp.issubdtype(feature_key.dtype, jax.dtypes.prng_key) and feature_key.shape != (2,):
    raise ValueError(
        f"performer: `feature_key` must be None, an int seed or a jax PRNG key, got an "
        f"array of shape {feature_key.shape} and dtype {feature_key.dtype}")
  blocks_key, norms_key = jax.random.split(feature_key)
  num_blocks = -(-num_features // head_dim)
  return _orthogonal_features(jax.random.normal(blocks_key, (num_blocks, head_dim, head_dim)),
                              jax.random.normal(norms_key, (num_features, head_dim)), jnp)


@functools.lru_cache(maxsize=64)
def _numpy_projection(head_dim, num_features, seed):
  rng = np.random.default_rng(seed)
  num_blocks = -(-num_features // head_dim)
  return _orthogonal_features(rng.standard_normal((num_blocks, head_dim, head_dim)),
                              rng.standard_normal((num_features, head_dim)), np).astype(np.float32)


def _orthogonal_features(blocks, norm_draws, xp):
  """W from Gaussian draws, in NumPy or jax.numpy (`xp`).

  blocks: [n, D, D] Gaussian, made orthonormal by QR (R's diagonal made
  positive: Haar-distributed); norm_draws: [m, D] Gaussian, whose row norms
  rescale the m rows.
  """
  q, r = xp.linalg.qr(blocks)
  q = q * xp.sign(xp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
  num_features, head_dim = norm_draws.shape
  rows = q.swapaxes(1, 2).reshape(-1, head_dim)[:num_features]
  return rows * xp.linalg.norm(norm_draws, axis=1)[:, None]


def performer(query, key, value, *, causal=False, kv_mask=None, num_features=256,
              feature_key=None, chunk_size=64):
  """Performer FAVOR+ attention (Choromanski et al. 2020). Approximate.

  phi(x) = exp(W x - |x|^2 / 2) / sqrt(m) with x = q / D^(1/4) (likewise k),
  so E[phi(q).phi(k)] = exp(q.k / sqrt(D)). A per-query and a per-(batch,
  head) key shift keep the exponentials finite; they cancel in the ratio.

  Args:
    num_features: m, the number of random features.
    feature_key: int seed or jax PRNG key for W (see `performer_projection`;
      default seed 0; pass a new PRNG key per step to redraw features).
    chunk_size: chunk length of the causal prefix sums.
  """
  s = common.check_inputs("performer", query, key, value, kv_mask)
  chunk = common.positive_int("performer", "chunk_size", chunk_size)
  w = performer_projection(s.head_dim, num_features, feature_key)
  x_scale = float(s.head_dim) ** -0.25

  def log_features(x):  # log of phi(x) * sqrt(m), before any shift
    x = x * x_scale
    return jnp.einsum("...d,fd->...f", x, w) - 0.5 * jnp.sum(x * x, -1, keepdims=True)

  lq = log_features(_grouped(query, s))
  lk = log_features(_keys(key))
  lq = lq - jax.lax.stop_gradient(lq.max(-1, keepdims=True))
  real = jnp.ones((s.batch, s.k_len), bool) if kv_mask is None else kv_mask
  k_shift = jnp.max(jnp.where(real[:, None, :, None], lk, -jnp.inf), axis=(2, 3), keepdims=True)
  k_shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(k_shift), k_shift, 0.0))
  norm = float(num_features) ** -0.5
  phi_q = jnp.exp(lq) * norm
  phi_k = _masked_keys(jnp.exp(lk - k_shift) * norm, kv_mask)
  return _weighted_sum(phi_q, phi_k, value, s, causal, chunk).astype(query.dtype)
