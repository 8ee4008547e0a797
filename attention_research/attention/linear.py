"""Linear-cost attention: kernel feature maps instead of the softmax.

Both variants here are APPROXIMATE with respect to softmax attention: they
compute out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j), which
never forms the Lq x Lk matrix.

- `linear`: phi = elu + 1 (or relu), Katharopoulos et al. 2020, "Transformers
  are RNNs". No 1/sqrt(D) scaling, as in the paper.
- `performer`: FAVOR+ positive orthogonal random features, Choromanski et al.
  2020, "Rethinking Attention with Performers": an unbiased estimate of
  exp(q.k / sqrt(D)), so it approaches softmax attention as features grow.

Non-causal attention sums one [F, D + 1] state over steps of key rows, then
applies it to steps of query rows; its custom VJP recomputes each step's
features, so no temporary grows with L (`rows_per_step`). Causal attention
uses chunked prefix sums: within a chunk the (small) masked quadratic form,
across chunks an exclusive cumulative sum of per-chunk [F, D + 1] states (F
features: D for `linear`, num_features for `performer`), so memory is
O(L / chunk x F x D), never [L, F, D].
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from attention_research.attention import common
from attention_research.attention import context


def _causal_weighted_sum(phi_q, phi_k, value, s, chunk, before=None):
  """sum_{j <= i} phi_q_i.phi_k_j v_j / sum_{j <= i} phi_q_i.phi_k_j, as
  [B, Lq, H, D] float32, by chunked prefix sums.

  phi_q: [B, Hkv, G, Lq, F]; phi_k: [B, Hkv, Lk, F], zero for masked keys.
  Heads lead and length is second to last, so each einsum is a plain batched
  matmul with no transposes of L-sized arrays (memory-bound work here). The
  values carry an extra column of ones, so one matmul gives the numerator
  and, in that column, the denominator: a separate sum of phi_k and a
  matrix-vector product would each be another pass over L-sized arrays.
  Causal is top-left aligned (key j <= query i), so both sides are padded to
  a common length; padded keys have phi_k = 0 and padded queries are dropped.
  `before` ([B, Hkv, F, D + 1] or None) is the state of keys before these
  (earlier shards of the sequence), added to every chunk's.
  """
  v = _with_ones(_keys(value))  # [B, Hkv, Lk, D + 1]
  c = min(chunk, max(s.q_len, s.k_len))
  length = common.round_up(max(s.q_len, s.k_len), c)
  n = length // c
  pq = common.pad_axis(phi_q, 3, length).reshape(*phi_q.shape[:3], n, c, phi_q.shape[-1])
  pk = common.pad_axis(phi_k, 2, length).reshape(*phi_k.shape[:2], n, c, phi_k.shape[-1])
  pv = common.pad_axis(v, 2, length).reshape(*v.shape[:2], n, c, v.shape[-1])
  scores = jnp.einsum("bhgnqf,bhnkf->bhgnqk", pq, pk) * jnp.tril(jnp.ones((c, c)))
  states = jnp.einsum("bhnkf,bhnkd->bhnfd", pk, pv)
  states = _exclusive_cumsum(states, axis=2)            # keys of earlier chunks only
  if before is not None:
    states = states + before[:, :, None]
  num = (jnp.einsum("bhgnqk,bhnkd->bhgnqd", scores, pv)
         + jnp.einsum("bhgnqf,bhnfd->bhgnqd", pq, states))
  num = num.reshape(*num.shape[:3], length, num.shape[-1])[:, :, :, :s.q_len]
  out = _divide_by_last_column(num)
  return out.transpose(0, 3, 1, 2, 4).reshape(s.batch, s.q_len, s.heads, s.head_dim)


@jax.custom_vjp
def _divide_by_last_column(num):
  """num[..., :-1] / num[..., -1:], and zeros where that last column is 0.

  The weights are >= 0, so the denominator is 0 only when every weight is 0
  (no key): such a row is defined as zeros. A custom VJP because autodiff's
  gradient of the denominator is a sum over D that XLA:CPU fuses into a
  reduction far slower than the equivalent einsum (docs/benchmarks/README.md,
  linear). The non-causal path has its own VJP below, which calls
  _divide_fwd and _divide_bwd itself. Like every custom VJP, it rules out
  forward-mode autodiff (jvp, jacfwd).
  """
  return _divide_fwd(num)[0]


def _divide_fwd(num):
  den = num[..., -1:]
  has_key = den > 0
  inv = jnp.where(has_key, 1.0 / jnp.where(has_key, den, 1.0), 0.0)
  out = num[..., :-1] * inv
  return out, (out, inv)


def _divide_bwd(residuals, g):
  out, inv = residuals
  d_num = g * inv
  d_den = -jnp.einsum("...d,...d->...", d_num, out)[..., None]
  return (jnp.concatenate([d_num, d_den], axis=-1),)


_divide_by_last_column.defvjp(_divide_fwd, _divide_bwd)


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
  """[B, L, Hkv, D] -> [B, Hkv, L, D] float32 (keys, values, or a step of either)."""
  return key.transpose(0, 2, 1, 3).astype(jnp.float32)


def _with_ones(v):
  """v with a column of ones, so one matmul gives numerator and denominator."""
  return jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)


def _masked_keys(phi_k, kv_mask):
  return phi_k if kv_mask is None else phi_k * kv_mask[:, None, :, None]


def _elu_plus_one(x):
  return jax.nn.elu(x) + 1.0


_FEATURE_MAPS = {"elu": _elu_plus_one, "relu": jax.nn.relu}


def _constant_map(phi):
  """phi as the stepped path's (consts, x) -> features; linear has no consts."""
  return lambda consts, x: phi(x)


# (query features, key features, whether the key features are logs to be
# shifted), built once so the custom VJP sees the same static argument.
_LINEAR_FEATURES = {name: (_constant_map(phi), _constant_map(phi), False)
                    for name, phi in _FEATURE_MAPS.items()}


def linear(query, key, value, *, causal=False, kv_mask=None, feature_map="elu", chunk_size=64,
           rows_per_step=512):
  """Linear attention (Katharopoulos et al. 2020). Approximate: not softmax.

  Args:
    feature_map: "elu" (elu(x) + 1, the paper's) or "relu".
    chunk_size: chunk length of the causal prefix sums.
    rows_per_step: non-causal only: keys, then queries, are taken this many
      rows a step (None: all in one step), with a custom VJP that recomputes
      each step's features, so no temporary is L-sized. Tuned for CPU, where
      glibc maps every large buffer afresh on each call and page-faults it
      again (docs/benchmarks/README.md, linear). Unmeasured on accelerators.
  """
  s = common.check_inputs("linear", query, key, value, kv_mask)
  common.one_of("linear", "feature_map", feature_map, tuple(_FEATURE_MAPS))
  chunk = common.positive_int("linear", "chunk_size", chunk_size)
  if rows_per_step is not None:
    rows_per_step = common.positive_int("linear", "rows_per_step", rows_per_step)
  phi = _FEATURE_MAPS[feature_map]
  if not causal:
    return _stepped(query, key, value, kv_mask, (), rows_per_step, _LINEAR_FEATURES[feature_map])
  phi_q = phi(_grouped(query, s))
  phi_k = _masked_keys(phi(_keys(key)), kv_mask)
  return _causal_weighted_sum(phi_q, phi_k, value, s, chunk).astype(query.dtype)


def _kernel_flops_per_query(seq_len, heads, kv_heads, head_dim, features, causal, chunk_size):
  """State and numerator 2 F D (H + Hkv), denominator 2 F H; causal adds the
  in-chunk quadratic form 2 H c (F + D), c = min(chunk_size, L)."""
  flops = 2 * features * head_dim * (heads + kv_heads) + 2 * features * heads
  if causal:
    flops += 2 * heads * min(chunk_size, seq_len) * (features + head_dim)
  return float(flops)


def linear_flops_per_query(seq_len, *, heads, kv_heads, head_dim, causal, chunk_size,
                           **options) -> float:
  """Forward FLOPs per query token, paid per token, not per key: F = D features."""
  del options
  return _kernel_flops_per_query(seq_len, heads, kv_heads, head_dim, head_dim, causal,
                                 chunk_size)


# ---------------------------------------------------------------------------
# Non-causal kernel attention in steps of rows, with a hand-written VJP
# (`linear` and `performer`).
#
# With S = sum_j phi(k_j)^T [v_j, 1] (an [F, D + 1] state per kv head), the
# output is out_i = n_i[:D] / n_i[D] for n_i = phi(q_i) S. The backward pass
# needs only the inputs and S: with dn_i = [g_i / den_i, -g_i.out_i / den_i],
#   d phi(q_i) = dn_i S^T,   dS = sum_i phi(q_i)^T dn_i,
#   d phi(k_j) = [v_j, 1] dS^T,   d v_j = phi(k_j) dS[:, :D],
# one pass over query steps (dq and dS), then one over key steps (dk, dv).
#
# `features` is (phi_q, phi_k, shifted), each phi a (consts, x) -> [..., F]
# function. With `shifted`, phi_k gives log-features and the key features
# are exp(phi_k - shift), the shift the largest log-feature of any real key
# of a (batch, kv head): it cancels in the ratio and keeps exp finite. The
# forward finds it as it goes, rescaling S whenever it grows (as an online
# softmax does), and saves it for the backward. The consts (performer's
# projection W) are constants of the computation: no gradient flows into
# them.

def _step_rows(length, rows_per_step):
  """Rows per step: balanced, so the last step is not mostly overlap."""
  rows = length if rows_per_step is None else min(rows_per_step, length)
  return _num_steps(length, _num_steps(length, rows))


def _step(x, i, rows):
  """Step i's rows of x [B, L, ...], and which are new (not in step i - 1).

  The last step is clamped to end at L, so it may overlap the one before;
  sums count only new rows, and overlapping outputs are written twice with
  the same values.
  """
  start = jnp.minimum(i * rows, x.shape[1] - rows)
  new = start + jnp.arange(rows) >= i * rows
  return jax.lax.dynamic_slice_in_dim(x, start, rows, axis=1), start, new


def _put(buffer, rows, start):
  """buffer [B, L, ...] with rows [B, c, ...] written from row `start` on."""
  return jax.lax.dynamic_update_slice_in_dim(buffer, rows.astype(buffer.dtype), start, axis=1)


def _num_steps(length, rows):
  return -(-length // rows)


# The shift before any real key: finite, so exp(shift - larger) is 0, not NaN.
_NO_SHIFT = float(np.finfo(np.float32).min)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _stepped(query, key, value, kv_mask, consts, rows_per_step, features):
  return _stepped_fwd(query, key, value, kv_mask, consts, rows_per_step, features)[0]


def _stepped_fwd(query, key, value, kv_mask, consts, rows_per_step, features):
  phi_q, phi_k, shifted = features
  b, lq, h, d = query.shape
  lk, hkv = key.shape[1], key.shape[2]
  rk = _step_rows(lk, rows_per_step)

  def add_keys(i, carry):
    state, shift = carry
    k, _, new = _step(key, i, rk)
    real = new[None] if kv_mask is None else new[None] & _step(kv_mask, i, rk)[0]
    real = real[:, None, :, None]
    f = phi_k(consts, _keys(k))
    if shifted:
      step_max = jnp.max(jnp.where(real, f, _NO_SHIFT), axis=(2, 3), keepdims=True)
      new_shift = jnp.maximum(shift, step_max)
      state, shift = state * jnp.exp(shift - new_shift), new_shift
      f = jnp.exp(f - shift)
    phi_k_step = jnp.where(real, f, 0.0)
    v = _with_ones(_keys(_step(value, i, rk)[0]))
    return state + jnp.einsum("bhkf,bhkd->bhfd", phi_k_step, v), shift
  num_features = jax.eval_shape(lambda: phi_k(consts, _keys(key[:, :1]))).shape[-1]
  state, shift = jax.lax.fori_loop(
      0, _num_steps(lk, rk), add_keys,
      (jnp.zeros((b, hkv, num_features, d + 1), jnp.float32),
       jnp.full((b, hkv, 1, 1), _NO_SHIFT, jnp.float32)))

  rq = _step_rows(lq, rows_per_step)
  s = common.Shapes(b, rq, lk, h, hkv, d)  # one query step's, for _grouped

  def write_queries(i, out):
    q, start, _ = _step(query, i, rq)
    num = jnp.einsum("bhgqf,bhfd->bhgqd", phi_q(consts, _grouped(q, s)), state)
    o = _divide_fwd(num)[0].transpose(0, 3, 1, 2, 4).reshape(b, rq, h, d)
    return _put(out, o, start)
  out = jax.lax.fori_loop(0, _num_steps(lq, rq), write_queries, jnp.zeros_like(query))
  return out, (query, key, value, kv_mask, consts, state, shift)


def _stepped_bwd(rows_per_step, features, residuals, d_out):
  phi_q, phi_k, shifted = features
  query, key, value, kv_mask, consts, state, shift = residuals
  b, lq, h, d = query.shape
  lk, hkv = key.shape[1], key.shape[2]
  rq = _step_rows(lq, rows_per_step)
  s = common.Shapes(b, rq, lk, h, hkv, d)  # one query step's, for _grouped

  def query_step(i, carry):
    dq, d_state = carry
    q, start, new = _step(query, i, rq)
    phi_q_step, phi_vjp = jax.vjp(lambda x: phi_q(consts, x), _grouped(q, s))
    num = jnp.einsum("bhgqf,bhfd->bhgqd", phi_q_step, state)
    d_num, = _divide_bwd(_divide_fwd(num)[1], _grouped(_step(d_out, i, rq)[0], s))
    d_phi_q = jnp.einsum("bhgqd,bhfd->bhgqf", d_num, state)
    d_state += jnp.einsum("bhgqf,bhgqd->bhfd", phi_q_step * new[:, None], d_num)
    dq_step, = phi_vjp(d_phi_q)
    dq_step = dq_step.transpose(0, 3, 1, 2, 4).reshape(b, rq, h, d)
    return _put(dq, dq_step, start), d_state
  dq, d_state = jax.lax.fori_loop(0, _num_steps(lq, rq), query_step,
                                  (jnp.zeros_like(query), jnp.zeros_like(state)))

  rk = _step_rows(lk, rows_per_step)

  def key_features(x, real):
    """A step's key features, zero for masked keys; masked inside, so that
    their cotangent is zero where exp(log-features - shift) overflows."""
    f = phi_k(consts, x)
    if shifted:
      return jnp.exp(f - shift if real is None else jnp.where(real, f - shift, -jnp.inf))
    return f if real is None else jnp.where(real, f, 0.0)

  def key_step(i, carry):
    dk, dv = carry
    k, start, _ = _step(key, i, rk)
    real = None if kv_mask is None else _step(kv_mask, i, rk)[0][:, None, :, None]
    phi_k_step, phi_vjp = jax.vjp(lambda x: key_features(x, real), _keys(k))
    v = _with_ones(_keys(_step(value, i, rk)[0]))
    d_phi_k = jnp.einsum("bhkd,bhfd->bhkf", v, d_state)
    dv_step = jnp.einsum("bhkf,bhfd->bhkd", phi_k_step, d_state[..., :-1])
    dk_step, = phi_vjp(d_phi_k)
    return (_put(dk, dk_step.transpose(0, 2, 1, 3), start),
            _put(dv, dv_step.transpose(0, 2, 1, 3), start))
  dk, dv = jax.lax.fori_loop(0, _num_steps(lk, rk), key_step,
                             (jnp.zeros_like(key), jnp.zeros_like(value)))
  return dq, dk, dv, None, jax.tree.map(jnp.zeros_like, consts)


_stepped.defvjp(_stepped_fwd, _stepped_bwd)


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


def _favor_logs(w, x):
  """log(phi(x) sqrt(m)) = W x' - |x'|^2 / 2 with x' = x / D^(1/4), before any shift."""
  x = x * float(x.shape[-1]) ** -0.25
  return jnp.einsum("...d,fd->...f", x, w) - 0.5 * jnp.sum(x * x, -1, keepdims=True)


def _favor_query(consts, x):
  """Query features up to a per-query factor (which cancels in the ratio):
  shifted by the query's largest log-feature, so exp stays finite."""
  logs = _favor_logs(consts[0], x)
  return jnp.exp(logs - jax.lax.stop_gradient(logs.max(-1, keepdims=True)))


def _favor_key_logs(consts, x):
  return _favor_logs(consts[0], x)


# The stepped path's features: keys as log-features, shifted as it goes.
_FAVOR_FEATURES = (_favor_query, _favor_key_logs, True)


def performer(query, key, value, *, causal=False, kv_mask=None, num_features=256,
              feature_key=None, chunk_size=64, rows_per_step=512):
  """Performer FAVOR+ attention (Choromanski et al. 2020). Approximate.

  phi(x) = exp(W x - |x|^2 / 2) / sqrt(m) with x = q / D^(1/4) (likewise k),
  so E[phi(q).phi(k)] = exp(q.k / sqrt(D)). A per-query and a per-(batch,
  kv head) key shift keep the exponentials finite; they cancel in the ratio,
  as does 1/sqrt(m), which is left out.

  Args:
    num_features: m, the number of random features.
    feature_key: int seed or jax PRNG key for W (see `performer_projection`;
      default seed 0; pass a new PRNG key per step to redraw features). W is
      a constant of the computation: no gradient flows into it.
    chunk_size: chunk length of the causal prefix sums.
    rows_per_step: non-causal only: keys, then queries, this many rows a step
      (None: all in one step), as in `linear`, with the same hand-written
      VJP; the key shift is found as the steps go. The one-shot form's
      L-sized temporaries are mapped afresh on each call on CPU
      (docs/benchmarks/README.md, performer).
  """
  s = common.check_inputs("performer", query, key, value, kv_mask)
  chunk = common.positive_int("performer", "chunk_size", chunk_size)
  if rows_per_step is not None:
    rows_per_step = common.positive_int("performer", "rows_per_step", rows_per_step)
  w = performer_projection(s.head_dim, num_features, feature_key)
  if not causal:
    return _stepped(query, key, value, kv_mask, (w,), rows_per_step, _FAVOR_FEATURES)
  phi_q = _favor_query((w,), _grouped(query, s))
  lk = _favor_logs(w, _keys(key))
  real = jnp.ones((s.batch, s.k_len), bool) if kv_mask is None else kv_mask
  k_shift = jnp.max(jnp.where(real[:, None, :, None], lk, -jnp.inf), axis=(2, 3), keepdims=True)
  k_shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(k_shift), k_shift, 0.0))
  # Masked inside the exp: a padding key far above the real ones would
  # overflow it, and 0 * inf is NaN in the value or the gradient.
  phi_k = jnp.exp(jnp.where(real[:, None, :, None], lk - k_shift, -jnp.inf))
  return _causal_weighted_sum(phi_q, phi_k, value, s, chunk).astype(query.dtype)


def performer_flops_per_query(seq_len, *, heads, kv_heads, head_dim, causal, num_features,
                              chunk_size, **options) -> float:
  """Forward FLOPs per query token: linear's with F = num_features, plus the
  feature projection 2 D F (H + Hkv)."""
  del options
  projection = 2 * head_dim * num_features * (heads + kv_heads)
  return projection + _kernel_flops_per_query(seq_len, heads, kv_heads, head_dim, num_features,
                                              causal, chunk_size)


# ---------------------------------------------------------------------------
# Context parallelism (context.py): one shard of the sequence per device,
# under either strategy. The key-value state is all the shards share:
# non-causal, summed over the axis (one psum); causal, the sum over earlier
# shards (a prefix) starts each shard's chunked prefix sums. O(L / n) a device.

def _kernel_context(phi_q, phi_k, value, s, causal, chunk, axis, dtype):
  v = _with_ones(_keys(value))
  total = jnp.einsum("bhkf,bhkd->bhfd", phi_k, v)        # this shard's keys
  if causal:
    before = context.exclusive_prefix(total, axis)
    return _causal_weighted_sum(phi_q, phi_k, value, s, chunk, before=before).astype(dtype)
  num = jnp.einsum("bhgqf,bhfd->bhgqd", phi_q, jax.lax.psum(total, axis))
  out = _divide_by_last_column(num)
  return out.transpose(0, 3, 1, 2, 4).reshape(s.batch, s.q_len, s.heads, s.head_dim).astype(dtype)


def linear_context(query, key, value, *, causal=False, kv_mask=None, axis, feature_map="elu",
                   chunk_size=64, rows_per_step=512):
  """`linear` on one shard of the sequence (rows_per_step does not split a shard)."""
  del rows_per_step
  s = common.check_inputs("linear", query, key, value, kv_mask)
  common.one_of("linear", "feature_map", feature_map, tuple(_FEATURE_MAPS))
  chunk = common.positive_int("linear", "chunk_size", chunk_size)
  phi = _FEATURE_MAPS[feature_map]
  phi_k = _masked_keys(phi(_keys(key)), kv_mask)
  return _kernel_context(phi(_grouped(query, s)), phi_k, value, s, causal, chunk, axis,
                         query.dtype)


def performer_context(query, key, value, *, causal=False, kv_mask=None, axis, num_features=256,
                      feature_key=None, chunk_size=64, rows_per_step=512):
  """`performer` on one shard of the sequence; the key shift is the largest
  log-feature over every shard (one pmax), as on one device."""
  del rows_per_step
  s = common.check_inputs("performer", query, key, value, kv_mask)
  chunk = common.positive_int("performer", "chunk_size", chunk_size)
  w = performer_projection(s.head_dim, num_features, feature_key)
  lk = _favor_logs(w, _keys(key))
  real = jnp.ones((s.batch, s.k_len), bool) if kv_mask is None else kv_mask
  k_shift = jnp.max(jnp.where(real[:, None, :, None], jax.lax.stop_gradient(lk), -jnp.inf),
                    axis=(2, 3), keepdims=True)
  k_shift = jax.lax.pmax(k_shift, axis)
  k_shift = jnp.where(jnp.isfinite(k_shift), k_shift, 0.0)
  phi_k = jnp.exp(jnp.where(real[:, None, :, None], lk - k_shift, -jnp.inf))
  return _kernel_context(_favor_query((w,), _grouped(query, s)), phi_k, value, s, causal, chunk,
                         axis, query.dtype)
