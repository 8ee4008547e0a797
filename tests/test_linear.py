"""`attention.linear` against a direct float64 evaluation of its definition.

Katharopoulos et al. 2020, "Transformers are RNNs", Eq. 4-6:

    out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j)

with phi(x) = elu(x) + 1 (or relu), no 1/sqrt(D) scaling. The reference below
forms the O(L^2) weight matrix directly; the library never does (chunked
prefix sums when causal, steps of rows with a hand-written VJP when not), so
agreement checks the chunking, the steps, the padding and the GQA
bookkeeping. Keys with kv_mask False are dropped; causal
means key j <= query i (top-left aligned, also when Lq != Lk); a row with no
key (all weights zero) is zeros.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_research import attention
from tests import reference

D = 8


# ---------------------------------------------------------------------------
# Float64 reference, written from the paper's definition.

def _phi(x, feature_map):
  if feature_map == "elu":
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))  # elu(x) + 1
  return np.maximum(x, 0.0)


def _phi_grad(x, feature_map):
  if feature_map == "elu":
    return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0)))
  return (x > 0).astype(np.float64)


_expand = reference.expand_kv


def _allowed(batch, q_len, k_len, causal, kv_mask):
  """bool [B, 1, Lq, Lk]; causal is top-left aligned (key j <= query i)."""
  pattern = np.tril(np.ones((q_len, k_len), bool)) if causal else None
  return reference.full_mask(batch, 1, q_len, k_len, pattern, kv_mask)


def _forward(q, k, v, causal, kv_mask, feature_map):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  heads = q.shape[2]
  ke, ve = _expand(k, heads), _expand(v, heads)
  allowed = _allowed(q.shape[0], q.shape[1], k.shape[1], causal, kv_mask)
  w = np.einsum("bqhf,bkhf->bhqk", _phi(q, feature_map), _phi(ke, feature_map)) * allowed
  den = w.sum(-1)                                              # [B, H, Lq]
  num = np.einsum("bhqk,bkhd->bhqd", w, ve)
  inv = np.where(den > 0, 1.0 / np.where(den > 0, den, 1.0), 0.0)
  out = num * inv[..., None]
  return out.transpose(0, 2, 1, 3), (q, ke, ve, allowed, w, inv, out)


def linear_reference(q, k, v, *, causal=False, kv_mask=None, feature_map="elu"):
  """out [B, Lq, H, D] in float64."""
  return _forward(q, k, v, causal, kv_mask, feature_map)[0]


def linear_reference_vjp(q, k, v, d_out, *, causal=False, kv_mask=None, feature_map="elu"):
  """(dq, dk, dv) of sum(out * d_out), by hand in float64.

  With w_ij = phi(q_i).phi(k_j) (times the mask), den_i = sum_j w_ij and
  out_i = sum_j w_ij v_j / den_i:
    d out_i / d w_ij = (v_j - out_i) / den_i,   d out_i / d v_j = w_ij / den_i.
  A row with den_i = 0 is the constant 0 and passes no gradient.
  """
  _, (q, ke, ve, allowed, w, inv, out) = _forward(q, k, v, causal, kv_mask, feature_map)
  heads, kv_heads = q.shape[2], np.shape(k)[2]
  g = np.asarray(d_out, np.float64).transpose(0, 2, 1, 3) * inv[..., None]  # [B, H, Lq, D]
  dv = np.einsum("bhqk,bhqd->bkhd", w, g)
  dw = (np.einsum("bhqd,bkhd->bhqk", g, ve) - np.einsum("bhqd,bhqd->bhq", g, out)[..., None])
  dw = dw * allowed
  dq = np.einsum("bhqk,bkhf->bqhf", dw, _phi(ke, feature_map)) * _phi_grad(q, feature_map)
  dk = np.einsum("bhqk,bqhf->bkhf", dw, _phi(q, feature_map)) * _phi_grad(ke, feature_map)

  def fold(x):  # sum the query heads that share a kv head
    b, l, _, d = x.shape
    return x.reshape(b, l, kv_heads, heads // kv_heads, d).sum(3)
  return dq, fold(dk), fold(dv)


# ---------------------------------------------------------------------------
# Inputs.

def _inputs(seed, batch=2, q_len=24, k_len=24, heads=4, kv_heads=2, dtype=np.float32):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((batch, q_len, heads, D))
  k = rng.standard_normal((batch, k_len, kv_heads, D))
  v = rng.standard_normal((batch, k_len, kv_heads, D))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _random_kv_mask(seed, batch, k_len, empty_row=None):
  mask = np.random.default_rng(seed).random((batch, k_len)) < 0.7
  mask[:, 0] = True
  if empty_row is not None:
    mask[empty_row] = False
  return jnp.asarray(mask)


# One compiled program per call shape, instead of op-by-op dispatch.
linear = jax.jit(attention.get("linear"), static_argnames=("causal", "feature_map", "chunk_size",
                                                         "rows_per_step"))


def _close(actual, expected, tol=2e-5):
  actual = np.asarray(actual, np.float64)
  assert actual.shape == expected.shape
  assert np.all(np.isfinite(actual))
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------
# Values.

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("q_len,k_len,chunk_size", [
    (37, 37, 8),    # chunk does not divide L
    (32, 32, 8),    # chunk divides L
    (21, 21, 64),   # chunk larger than L
    (13, 29, 8),    # Lq < Lk
    (29, 13, 8),    # Lq > Lk
])
def test_matches_direct_formula(causal, q_len, k_len, chunk_size):
  q, k, v = _inputs(seed=q_len * 100 + k_len, q_len=q_len, k_len=k_len)
  out = linear(q, k, v, causal=causal, chunk_size=chunk_size)
  assert out.dtype == jnp.float32 and out.shape == q.shape
  _close(out, linear_reference(q, k, v, causal=causal))


@pytest.mark.parametrize("causal", [False, True])
def test_kv_mask_and_fully_masked_batch_row(causal):
  q, k, v = _inputs(seed=7, q_len=29, k_len=29, kv_heads=4)
  kv_mask = _random_kv_mask(8, 2, 29, empty_row=1)
  out = linear(q, k, v, causal=causal, kv_mask=kv_mask, chunk_size=8)
  expected = linear_reference(q, k, v, causal=causal, kv_mask=kv_mask)
  assert np.all(expected[1] == 0)
  _close(out, expected)
  assert np.all(np.asarray(out)[1] == 0)
  # Masked keys are really ignored: changing them changes nothing.
  noise = jnp.where(kv_mask[:, :, None, None], 0.0, 100.0)
  out_changed = linear(q, k + noise, v - noise, causal=causal, kv_mask=kv_mask,
                                 chunk_size=8)
  _close(out_changed, expected)


def test_causal_rows_with_no_key_are_zero():
  """Causal plus a mask hiding the first keys: the first queries see nothing."""
  q, k, v = _inputs(seed=9, q_len=19, k_len=19)
  kv_mask = jnp.asarray(np.arange(19)[None, :].repeat(2, 0) >= np.array([[5], [0]]))
  out = linear(q, k, v, causal=True, kv_mask=kv_mask, chunk_size=4)
  expected = linear_reference(q, k, v, causal=True, kv_mask=kv_mask)
  assert np.all(expected[0, :5] == 0) and np.all(expected[0, 5:] != 0)
  _close(out, expected)


@pytest.mark.parametrize("causal", [False, True])
def test_relu_feature_map(causal):
  q, k, v = _inputs(seed=11, q_len=23, k_len=23)
  out = linear(q, k, v, causal=causal, feature_map="relu", chunk_size=8)
  expected = linear_reference(q, k, v, causal=causal, feature_map="relu")
  _close(out, expected, tol=1e-4)  # relu weights can nearly cancel to a small den
  # relu differs from elu + 1 on these inputs (so the option is not ignored).
  assert np.abs(expected - linear_reference(q, k, v, causal=causal)).max() > 1e-2


def test_relu_row_with_all_zero_weights_is_zero():
  """With relu, a query with no positive entry has weight 0 on every key."""
  q, k, v = _inputs(seed=12, q_len=9, k_len=9)
  q = q.at[0, 3].set(-jnp.abs(q[0, 3]) - 0.1)
  out = linear(q, k, v, feature_map="relu")
  assert np.all(np.asarray(out)[0, 3] == 0)
  _close(out, linear_reference(q, k, v, feature_map="relu"), tol=1e-4)


@pytest.mark.parametrize("causal,rows_per_step", [(False, 512), (False, 8), (True, 512)])
def test_bfloat16(causal, rows_per_step):
  q, k, v = _inputs(seed=13, q_len=33, k_len=33, dtype=jnp.bfloat16)
  out = linear(q, k, v, causal=causal, chunk_size=8, rows_per_step=rows_per_step)
  assert out.dtype == jnp.bfloat16 and out.shape == q.shape
  grads = jax.grad(lambda *a: jnp.sum(attention.get("linear")(
      *a, causal=causal, chunk_size=8, rows_per_step=rows_per_step).astype(jnp.float32)),
                   argnums=(0, 1, 2))(q, k, v)
  assert all(g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))
             for g in grads)
  # The reference sees exactly the bf16 inputs, in float64; the only extra
  # error allowed is bf16 rounding of the output (and of any bf16 internals).
  expected = linear_reference(*(np.asarray(x.astype(jnp.float32)) for x in (q, k, v)),
                              causal=causal)
  np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), expected,
                             rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("causal,q_len,k_len,feature_map,empty_row", [
    (False, 17, 23, "elu", None),
    (True, 21, 21, "elu", 1),      # batch row 1 has no key: zero output, zero gradient
    (True, 23, 15, "relu", None),
])
def test_gradient(causal, q_len, k_len, feature_map, empty_row):
  q, k, v = _inputs(seed=17 + q_len, q_len=q_len, k_len=k_len)
  kv_mask = _random_kv_mask(19, 2, k_len, empty_row=empty_row)
  d_out = jnp.asarray(np.random.default_rng(23).standard_normal(q.shape), jnp.float32)

  def loss(q, k, v):
    out = attention.get("linear")(q, k, v, causal=causal, kv_mask=kv_mask, feature_map=feature_map,
                           chunk_size=8)
    return jnp.sum(out * d_out)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  expected = linear_reference_vjp(q, k, v, d_out, causal=causal, kv_mask=kv_mask,
                                  feature_map=feature_map)
  for name, g, e in zip("qkv", grads, expected):
    assert g.shape == e.shape, name
    assert np.all(np.isfinite(np.asarray(g))), name
    if empty_row is not None:
      assert np.all(np.asarray(g)[empty_row] == 0), name
    scale = np.abs(e).max()
    np.testing.assert_allclose(np.asarray(g, np.float64), e, rtol=1e-4, atol=1e-4 * scale,
                               err_msg=f"d{name}")


def test_reference_gradient_matches_finite_differences():
  """The hand-written float64 backward above is itself right (central differences)."""
  rng = np.random.default_rng(29)
  q, k, v = (rng.standard_normal(s) for s in ((1, 5, 2, 3), (1, 6, 1, 3), (1, 6, 1, 3)))
  kv_mask = np.array([[True, True, False, True, True, True]])
  d_out = rng.standard_normal(q.shape)
  grads = linear_reference_vjp(q, k, v, d_out, causal=True, kv_mask=kv_mask)
  eps = 1e-6
  for idx, (x, g) in enumerate(zip((q, k, v), grads)):
    fd = np.zeros_like(x)
    for pos in np.ndindex(x.shape):
      args = [q, k, v]
      plus, minus = x.copy(), x.copy()
      plus[pos] += eps
      minus[pos] -= eps
      args[idx] = plus
      f_plus = np.sum(linear_reference(*args, causal=True, kv_mask=kv_mask) * d_out)
      args[idx] = minus
      f_minus = np.sum(linear_reference(*args, causal=True, kv_mask=kv_mask) * d_out)
      fd[pos] = (f_plus - f_minus) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# Non-causal steps (`rows_per_step`), values and gradients.

@pytest.mark.parametrize("q_len,k_len,rows_per_step,kv_heads", [
    (37, 37, 8, 2),      # 5 balanced steps of 8, the last clamped to overlap
    (37, 37, 1, 1),      # one row a step, MQA
    (13, 29, 5, 2),      # Lq < Lk: 3 query steps, 6 key steps
    (29, 13, 4, 4),      # Lq > Lk
    (21, 21, 64, 2),     # one step: rows larger than L
    (24, 24, None, 2),   # None: one step
])
def test_rows_per_step_values_and_gradients(q_len, k_len, rows_per_step, kv_heads):
  q, k, v = _inputs(seed=q_len + 3 * k_len, q_len=q_len, k_len=k_len, kv_heads=kv_heads)
  kv_mask = _random_kv_mask(5, 2, k_len, empty_row=1)
  d_out = jnp.asarray(np.random.default_rng(6).standard_normal(q.shape), jnp.float32)
  fn = lambda q, k, v: attention.get("linear")(q, k, v, kv_mask=kv_mask,
                                               rows_per_step=rows_per_step)
  out, vjp = jax.vjp(jax.jit(fn), q, k, v)
  _close(out, linear_reference(q, k, v, kv_mask=kv_mask))
  assert np.all(np.asarray(out)[1] == 0)
  expected = linear_reference_vjp(q, k, v, d_out, kv_mask=kv_mask)
  for name, g, e in zip("qkv", vjp(d_out), expected):
    assert np.all(np.asarray(g)[1] == 0), name   # no key: no gradient
    np.testing.assert_allclose(np.asarray(g, np.float64), e, rtol=1e-4,
                               atol=1e-4 * np.abs(e).max(), err_msg=f"d{name}")


def test_rows_per_step_gradient_under_vmap_equals_loop():
  q, k, v = _inputs(seed=43, q_len=19, k_len=19)
  loss = lambda q, k, v: jnp.sum(jnp.sin(attention.get("linear")(
      q[None], k[None], v[None], rows_per_step=4)))
  grads = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2))))(q, k, v)
  for i in range(q.shape[0]):
    expected = linear_reference_vjp(q[i:i + 1], k[i:i + 1], v[i:i + 1],
                                    np.cos(linear_reference(q[i:i + 1], k[i:i + 1], v[i:i + 1])))
    for name, g, e in zip("qkv", grads, expected):
      np.testing.assert_allclose(np.asarray(g[i:i + 1], np.float64), e, rtol=1e-4,
                                 atol=1e-4 * np.abs(e).max(), err_msg=f"d{name}[{i}]")


def test_rows_per_step_relu_gradient_without_mask():
  q, k, v = _inputs(seed=41, q_len=26, k_len=19)
  d_out = jnp.asarray(np.random.default_rng(42).standard_normal(q.shape), jnp.float32)
  fn = lambda q, k, v: attention.get("linear")(q, k, v, feature_map="relu", rows_per_step=6)
  out, vjp = jax.vjp(jax.jit(fn), q, k, v)
  _close(out, linear_reference(q, k, v, feature_map="relu"), tol=1e-4)
  expected = linear_reference_vjp(q, k, v, d_out, feature_map="relu")
  for name, g, e in zip("qkv", vjp(d_out), expected):
    np.testing.assert_allclose(np.asarray(g, np.float64), e, rtol=1e-4,
                               atol=1e-4 * np.abs(e).max(), err_msg=f"d{name}")


# ---------------------------------------------------------------------------
# Options.

@pytest.mark.parametrize("options,name", [
    (dict(feature_map="tanh"), "feature_map"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(chunk_size=-3), "chunk_size"),
    (dict(rows_per_step=0), "rows_per_step"),
    (dict(rows_per_step=-1), "rows_per_step"),
    (dict(rows_per_step=2.5), "rows_per_step"),
    (dict(window=3), "window"),
])
def test_invalid_options_raise(options, name):
  q, k, v = _inputs(seed=31, q_len=4, k_len=4)
  with pytest.raises(ValueError, match=name):
    attention.get("linear")(q, k, v, **options)
