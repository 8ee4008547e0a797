"""`attention.performer` (FAVOR+, Choromanski et al. 2020) and its projection.

Three kinds of check, each against something written here from the paper:
- the random features W: block-orthogonal rows with chi-distributed norms,
  so that each row is marginally N(0, I) and E[phi(x).phi(y)] = exp(x.y);
- the library's arithmetic given W: a float64 direct O(L^2) evaluation of
  sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j) with
  phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m), x' = x / D^(1/4);
- the approximation: the error against exact softmax attention falls as the
  number of features grows.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_research import attention
from tests import reference

D = 8
_STATIC = ("causal", "num_features", "chunk_size")
_performer_traced_key = jax.jit(attention.get("performer"), static_argnames=_STATIC)
_performer_static_key = jax.jit(attention.get("performer"), static_argnames=_STATIC + ("feature_key",))


def performer(q, k, v, **options):
  """attention.get("performer"), compiled; an int or None feature_key is static."""
  key = options.get("feature_key")
  if key is None or isinstance(key, int):
    return _performer_static_key(q, k, v, **options)
  return _performer_traced_key(q, k, v, **options)


# ---------------------------------------------------------------------------
# Float64 references.

_expand = reference.expand_kv


def _allowed(batch, q_len, k_len, causal, kv_mask):
  """bool [B, 1, Lq, Lk]; causal is top-left aligned (key j <= query i)."""
  pattern = np.tril(np.ones((q_len, k_len), bool)) if causal else None
  return reference.full_mask(batch, 1, q_len, k_len, pattern, kv_mask)


def favor_features(x, w):
  """phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m), x' = x / D^(1/4), float64."""
  x = np.asarray(x, np.float64) / x.shape[-1] ** 0.25
  w = np.asarray(w, np.float64)
  return np.exp(x @ w.T - 0.5 * np.sum(x * x, -1, keepdims=True)) / np.sqrt(w.shape[0])


def kernel_attention(weights, v):
  """sum_j w_ij v_j / sum_j w_ij with weights [B, H, Lq, Lk]; zero rows give 0."""
  v = _expand(np.asarray(v, np.float64), weights.shape[1])
  den = weights.sum(-1)
  num = np.einsum("bhqk,bkhd->bqhd", weights, v)
  den = den.transpose(0, 2, 1)[..., None]
  return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def performer_reference(q, k, v, w, *, causal=False, kv_mask=None):
  """FAVOR+ attention with the given features W [m, D], directly, in float64."""
  phi_q = favor_features(q, w)
  phi_k = favor_features(_expand(np.asarray(k), q.shape[2]), w)
  weights = np.einsum("bqhf,bkhf->bhqk", phi_q, phi_k)
  weights = weights * _allowed(q.shape[0], q.shape[1], k.shape[1], causal, kv_mask)
  return kernel_attention(weights, v)


def softmax_reference(q, k, v, *, causal=False):
  """Exact softmax(q k^T / sqrt(D)) v in float64."""
  q, k = np.asarray(q, np.float64), _expand(np.asarray(k, np.float64), q.shape[2])
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(_allowed(q.shape[0], q.shape[1], k.shape[1], causal, None), logits,
                    -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  return kernel_attention(weights, v)


def _inputs(seed, batch=2, q_len=24, k_len=24, heads=4, kv_heads=2, head_dim=D, qk_std=1.0):
  rng = np.random.default_rng(seed)
  q = qk_std * rng.standard_normal((batch, q_len, heads, head_dim))
  k = qk_std * rng.standard_normal((batch, k_len, kv_heads, head_dim))
  v = rng.standard_normal((batch, k_len, kv_heads, head_dim))
  return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


# ---------------------------------------------------------------------------
# The projection.

def test_projection_shape_and_block_orthogonality():
  m = 20  # two full blocks of D = 8 rows and a partial one of 4
  w = attention.performer_projection(D, m, 1)
  assert w.shape == (m, D) and w.dtype == jnp.float32
  w = np.asarray(w, np.float64)
  for start in range(0, m, D):
    block = w[start:start + D]
    gram = block @ block.T
    norms = np.sqrt(np.diag(gram))
    off_diagonal = gram - np.diag(np.diag(gram))
    assert np.abs(off_diagonal).max() <= 1e-5 * norms.max() ** 2, start
  # Rows of different blocks are independent, so not orthogonal.
  assert np.abs(w[:D] @ w[D:2 * D].T).max() > 0.1


@functools.lru_cache(maxsize=None)
def _many_rows(d=16, blocks=512):
  """One large projection, float64 [d * blocks, d], shared by the statistical tests."""
  return np.asarray(attention.performer_projection(d, d * blocks, 0), np.float64)


def test_projection_row_norms_are_chi_distributed():
  """Norms differ from row to row and follow chi(d): E|w|^2 = d, Var |w|^2 = 2 d."""
  w = _many_rows()
  n, d = w.shape
  norms = np.linalg.norm(w, axis=1)
  assert norms.std() / norms.mean() > 0.1  # chi(16): std / mean is about 0.18
  assert abs(np.mean(norms ** 2) - d) < 5 * np.sqrt(2 * d / n)
  chi_mean = math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
  chi_std = math.sqrt(d - chi_mean ** 2)
  assert abs(norms.mean() - chi_mean) < 5 * chi_std / np.sqrt(n)


def test_projection_rows_are_isotropic_so_the_kernel_is_unbiased():
  """Each row is marginally N(0, I), so E[exp(w.x - |x|^2 / 2)] = 1 for every x.

  Orthogonal rows from a QR decomposition are only uniformly oriented when the
  signs of Q's columns are fixed by diag(R) (Mezzadri 2007); otherwise, for
  example, the first row of every block has a negative first coordinate.
  """
  w = _many_rows()
  n, d = w.shape
  # The first row of each block: its first coordinate is positive half the time.
  first = w[::d, 0]
  assert 0.4 < np.mean(first > 0) < 0.6, np.mean(first > 0)
  # The mean row is 0 (each coordinate's mean has std about 1 / sqrt(n)).
  assert np.abs(w.mean(0)).max() < 5 / np.sqrt(n), w.mean(0)
  # Unbiased kernel: for unit x the feature mean is 1, with std below sqrt(e - 1) / sqrt(n).
  for x in (np.ones(d) / 4, -np.ones(d) / 4, np.eye(d)[0], -np.eye(d)[d - 1]):
    mean = np.mean(np.exp(w @ x - 0.5 * x @ x))
    assert abs(mean - 1) < 5 * np.sqrt(np.e - 1) / np.sqrt(n), (x, mean)


def test_projection_keys():
  m = 20
  default = np.asarray(attention.performer_projection(D, m))
  np.testing.assert_array_equal(default, np.asarray(attention.performer_projection(D, m, None)))
  np.testing.assert_array_equal(default, np.asarray(attention.performer_projection(D, m, 0)))
  assert not np.allclose(default, np.asarray(attention.performer_projection(D, m, 1)))
  for make_key in (jax.random.key, jax.random.PRNGKey):
    a = np.asarray(attention.performer_projection(D, m, make_key(5)))
    b = np.asarray(attention.performer_projection(D, m, make_key(5)))
    c = np.asarray(attention.performer_projection(D, m, make_key(6)))
    assert a.shape == (m, D)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# ---------------------------------------------------------------------------
# The library's arithmetic, given W.

@pytest.mark.parametrize("causal,q_len,k_len,kv_heads,masked,feature_key", [
    (True, 37, 37, 2, False, None),  # default key (seed 0); chunk 8 does not divide 37
    (False, 19, 29, 1, True, 5),     # cross attention, MQA, key mask, an int seed
    (True, 29, 19, 4, True, "key"),  # causal Lq > Lk, key mask, a jax key
])
def test_matches_direct_formula_given_features(causal, q_len, k_len, kv_heads, masked,
                                              feature_key):
  m = 48
  q, k, v = _inputs(q_len * 31 + k_len, q_len=q_len, k_len=k_len, kv_heads=kv_heads)
  if feature_key == "key":
    feature_key = jax.random.key(11)
  kv_mask = None
  if masked:
    mask = np.random.default_rng(k_len).random((2, k_len)) < 0.7
    mask[1] = False  # a batch row with no key at all: zeros
    mask[0, 0] = True
    kv_mask = jnp.asarray(mask)
  options = {} if feature_key is None else dict(feature_key=feature_key)
  out = performer(q, k, v, causal=causal, kv_mask=kv_mask, num_features=m, chunk_size=8,
                  **options)
  assert out.shape == q.shape and out.dtype == jnp.float32
  w = attention.performer_projection(D, m, feature_key)
  expected = performer_reference(q, k, v, w, causal=causal, kv_mask=kv_mask)
  out = np.asarray(out, np.float64)
  assert np.all(np.isfinite(out))
  if masked:
    assert np.all(out[1] == 0)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def direct_performer(q, k, v, w, *, causal=False, kv_mask=None):
  """FAVOR+ attention from the definition in jnp, for jax.grad: the O(L^2)
  weights, no stabilising shifts; a row with no key is 0 (double `where`, so
  its gradient is 0, not NaN)."""
  def phi(x):
    x = x / D ** 0.25
    return jnp.exp(x @ w.T - 0.5 * jnp.sum(x * x, -1, keepdims=True)) / np.sqrt(w.shape[0])
  groups = q.shape[2] // k.shape[2]
  ke, ve = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  weights = jnp.einsum("bqhf,bkhf->bhqk", phi(q), phi(ke))
  weights = weights * _allowed(q.shape[0], q.shape[1], k.shape[1], causal, kv_mask)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, ve)
  den = weights.sum(-1).transpose(0, 2, 1)[..., None]
  return jnp.where(den > 0, out / jnp.where(den > 0, den, 1.0), 0.0)


def _assert_grads_close(grads, expected):
  for name, g, e in zip("qkv", grads, expected):
    e = np.asarray(e, np.float64)
    np.testing.assert_allclose(np.asarray(g, np.float64), e, rtol=1e-4,
                               atol=1e-5 * np.abs(e).max(), err_msg=f"d{name}")


@pytest.mark.parametrize("causal", [True, False])
def test_gradient_given_features(causal):
  """jax.grad of the library equals jax.grad of a direct O(L^2) jnp evaluation."""
  m = 32
  q, k, v = _inputs(43, q_len=21, k_len=21, qk_std=0.7)
  d_out = jnp.asarray(np.random.default_rng(44).standard_normal(q.shape), jnp.float32)
  w = attention.performer_projection(D, m, 7)

  def lib(q, k, v):
    return attention.get("performer")(q, k, v, causal=causal, num_features=m, feature_key=7,
                                      chunk_size=8)

  grad = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * d_out), argnums=(0, 1, 2)))
  direct = lambda q, k, v: direct_performer(q, k, v, w, causal=causal)
  _assert_grads_close(grad(lib)(q, k, v), grad(direct)(q, k, v))


@pytest.mark.parametrize("q_len,k_len,rows_per_step,kv_heads", [
    (37, 37, 8, 2),      # 5 balanced steps of 8, the last clamped to overlap
    (13, 29, 5, 1),      # Lq < Lk: 3 query steps, 6 key steps, MQA
    (29, 13, 4, 4),      # Lq > Lk
    (24, 24, None, 2),   # None: one step
])
def test_rows_per_step_values_and_gradients(q_len, k_len, rows_per_step, kv_heads):
  """Non-causal steps against the float64 formula and the direct jnp gradient.

  The keys are scaled x1 to x4 along the sequence, so the largest
  log-feature of a key step moves by several units from step to step, and
  the state summed so far must be rescaled whenever it rises (without the
  rescaling these tests fail). In batch row 0 a whole key step is masked
  after the shift is set; row 1 has no key: zeros out, zero gradients, no
  NaN.
  """
  m = 32
  q, k, v = _inputs(q_len + 7 * k_len, q_len=q_len, k_len=k_len, kv_heads=kv_heads)
  k = k * jnp.linspace(1.0, 4.0, k_len)[None, :, None, None]
  mask = np.random.default_rng(k_len).random((2, k_len)) < 0.8
  mask[0, 0], mask[0, 8:16], mask[1] = True, False, False  # row 0: a whole key step masked
  kv_mask = jnp.asarray(mask)
  d_out = jnp.asarray(np.random.default_rng(q_len).standard_normal(q.shape), jnp.float32)
  w = attention.performer_projection(D, m, 9)

  def lib(q, k, v):
    return attention.get("performer")(q, k, v, kv_mask=kv_mask, num_features=m, feature_key=9,
                                      rows_per_step=rows_per_step)

  out, vjp = jax.vjp(jax.jit(lib), q, k, v)
  expected = performer_reference(q, k, v, w, kv_mask=kv_mask)
  np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(out)[1] == 0)
  grads = vjp(d_out)
  for name, g in zip("qkv", grads):
    assert np.all(np.asarray(g)[1] == 0), name  # no key: no gradient
  direct = lambda q, k, v: jnp.sum(direct_performer(q, k, v, w, kv_mask=kv_mask) * d_out)
  _assert_grads_close(grads, jax.jit(jax.grad(direct, argnums=(0, 1, 2)))(q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_a_masked_key_far_above_the_real_ones_changes_nothing(causal):
  """Real keys of norm about 85 have log-features of -110 and below; a
  masked zero key's are near 0, so exp(its log-feature - the real keys'
  shift) is over e^110, inf in float32. Masked, its value must not matter: the output and
  the gradients equal those with an ordinary key in its place, finite.
  (Not compared with the float64 formula when causal: with keys this far
  apart the shift, which is over all keys, underflows every weight of some
  early query rows.)"""
  q, k, v = _inputs(71, q_len=17, k_len=17)
  mask = np.ones((2, 17), bool)
  mask[:, 5] = False
  kv_mask = jnp.asarray(mask)
  far, ordinary = (30.0 * k).at[:, 5].set(0.0), (30.0 * k).at[:, 5].set(k[:, 5])
  fn = jax.jit(lambda q, k, v: attention.get("performer")(
      q, k, v, causal=causal, kv_mask=kv_mask, num_features=16, feature_key=2, rows_per_step=4))
  (out, vjp), (expected, expected_vjp) = jax.vjp(fn, q, far, v), jax.vjp(fn, q, ordinary, v)
  assert np.all(np.isfinite(np.asarray(out)))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
  if not causal:
    w = attention.performer_projection(D, 16, 2)
    np.testing.assert_allclose(np.asarray(out, np.float64),
                               performer_reference(q, far, v, w, kv_mask=kv_mask),
                               rtol=1e-4, atol=1e-5)
  d_out = jnp.asarray(np.random.default_rng(72).standard_normal(q.shape), jnp.float32)
  for name, g, e in zip("qkv", vjp(d_out), expected_vjp(d_out)):
    assert np.all(np.isfinite(np.asarray(g))), name
    np.testing.assert_array_equal(np.asarray(g), np.asarray(e), err_msg=f"d{name}")
  assert np.all(np.asarray(vjp(d_out)[1])[:, 5] == 0)  # a masked key gets no gradient


def test_rows_per_step_with_a_feature_key_traced_under_jit():
  """A PRNG key traced under jit (a fresh draw per step) runs the stepped
  path and its gradient, and matches the formula with the same draw."""
  q, k, v = _inputs(61, q_len=19, k_len=19)
  fn = jax.jit(lambda q, k, v, key: jnp.sum(attention.get("performer")(
      q, k, v, num_features=16, feature_key=key, rows_per_step=4) ** 2))
  key = jax.random.key(3)
  w = attention.performer_projection(D, 16, key)
  value, grads = jax.value_and_grad(fn, argnums=(0, 1, 2))(q, k, v, key)
  np.testing.assert_allclose(value, np.sum(performer_reference(q, k, v, w) ** 2), rtol=1e-4)
  direct = lambda q, k, v: jnp.sum(direct_performer(q, k, v, w) ** 2)
  _assert_grads_close(grads, jax.jit(jax.grad(direct, argnums=(0, 1, 2)))(q, k, v))


# ---------------------------------------------------------------------------
# The approximation of softmax attention.

def test_error_against_softmax_falls_as_features_grow():
  """Mean |performer - softmax| over 4 feature draws, by number of features.

  q, k entries N(0, 0.5^2) with D = 16, so the logits q.k / sqrt(D) have std
  0.25. Measured (2 x 32 x 2 heads, seeds 0-3): about 0.060, 0.036, 0.021,
  0.016, 0.012 for 16, 64, 256, 512, 1024 features, against an exact output
  whose RMS is about 0.17.
  """
  d = 16
  q, k, v = _inputs(47, batch=2, q_len=32, k_len=32, heads=2, kv_heads=2, head_dim=d,
                    qk_std=0.5)
  exact = softmax_reference(q, k, v)
  scale = np.sqrt(np.mean(exact ** 2))
  errors = {}
  for m in (16, 64, 256, 512, 1024):
    errors[m] = np.mean([
        np.abs(np.asarray(performer(q, k, v, num_features=m, feature_key=jax.random.key(s)),
                          np.float64) - exact).mean()
        for s in range(4)])
  ms = sorted(errors)
  assert all(errors[a] > errors[b] for a, b in zip(ms, ms[1:])), errors
  assert errors[1024] < errors[16] / 3, errors
  assert errors[512] < 0.15 * scale, (errors, scale)


# ---------------------------------------------------------------------------
# Options.

@pytest.mark.parametrize("options,name", [
    (dict(num_features=0), "num_features"),
    (dict(chunk_size=-1), "chunk_size"),
    (dict(rows_per_step=0), "rows_per_step"),
    (dict(rows_per_step=1.5), "rows_per_step"),
    (dict(feature_map="elu"), "feature_map"),  # a linear option, not performer's
])
def test_invalid_options_raise(options, name):
  q, k, v = _inputs(53, q_len=4, k_len=4)
  with pytest.raises(ValueError, match=name):
    attention.get("performer")(q, k, v, **options)


def test_projection_rejects_no_features():
  with pytest.raises(ValueError, match="num_features"):
    attention.performer_projection(D, 0)
