"""ALiBi (Press et al. 2022, "Train Short, Test Long") in the variants that
take it: dense, blockwise and local against the float64 softmax reference with
an additive bias -slope[h] * |i - j|, in value and in gradient; the paper's
slopes against hand-written values; and the option's validation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_research import attention
from attention_research.attention import blockwise as blockwise_lib
from tests import reference

ALIBI = ["dense", "blockwise", "local"]
# Small blocks so several blocks, a ragged last block and padding are exercised.
OPTIONS = {"blockwise": dict(block_q=16, block_k=8), "local": dict(window=5, block_size=8, rows_per_step=16)}
# Distinct, non-monotone slopes: a head mixed up with another changes the result.
SLOPES = np.array([0.3, 0.05, 0.6, 0.01], np.float32)
HEAD_DIM = 8

# name: (batch, q_len, k_len, heads, kv_heads, causal, key mask)
CASES = {
    "bidirectional_kvmask_empty_batch": (2, 37, 37, 4, 2, False, "empty_batch"),
    "causal_kvmask_empty_rows": (2, 37, 37, 4, 2, True, "first_row_empty"),
    "cross_kvmask": (2, 19, 37, 4, 2, False, "random"),
    "cross_causal": (2, 37, 19, 4, 2, True, None),
}


def make_inputs(batch, q_len, k_len, heads, kv_heads, kind, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(batch, q_len, heads, HEAD_DIM))
  k = rng.normal(size=(batch, k_len, kv_heads, HEAD_DIM))
  v = rng.normal(size=(batch, k_len, kv_heads, HEAD_DIM))
  kv_mask = None
  if kind is not None:
    kv_mask = rng.random((batch, k_len)) > 0.3
    if kind in ("empty_batch", "first_row_empty"):
      kv_mask[1] = False        # every row of batch 1 has no key
    if kind == "first_row_empty":
      kv_mask[0, 0] = False     # causal query 0 of batch 0 has no key
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return f32(q), f32(k), f32(v), None if kv_mask is None else jnp.asarray(kv_mask)


def call(name, q, k, v, **kwargs):
  return attention.get(name)(q, k, v, **OPTIONS.get(name, {}), **kwargs)


def reference_mask(name, batch, heads, q_len, k_len, causal, kv_mask):
  pattern = attention.variant(name).mask(q_len, k_len, causal=causal, **OPTIONS.get(name, {}))
  return reference.full_mask(batch, heads, q_len, k_len, pattern, kv_mask)


def test_alibi_slopes_are_the_papers():
  expected = {
      1: [2 ** -8],
      2: [2 ** -4, 2 ** -8],
      4: [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8],
      8: [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256],
      # Not a power of two: the 4-head slopes, then every other 8-head slope.
      6: [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8],
      3: [2 ** -4, 2 ** -8, 2 ** -2],
      # The 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 from the 16-head ones.
      12: [2.0 ** -e for e in (1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5)],
  }
  for n, want in expected.items():
    got = attention.alibi_slopes(n)
    assert got.dtype == np.float32 and got.shape == (n,), (n, got)
    np.testing.assert_allclose(got, want, rtol=1e-7, err_msg=f"num_heads={n}")
  for bad in (0, -2, 2.5, True, "8"):
    with pytest.raises(ValueError, match="`num_heads` must be a positive integer"):
      attention.alibi_slopes(bad)


def test_exactly_the_alibi_variants_take_the_option():
  takes = {n for n in attention.names() if "alibi_slopes" in attention.variant(n).options}
  assert takes == set(ALIBI)
  for name in ALIBI:
    spec = attention.variant(name)
    assert spec.options["alibi_slopes"] is None
    # The mask function takes every option; a bias hides no key.
    options = {**spec.options, **OPTIONS.get(name, {}), "alibi_slopes": SLOPES}
    np.testing.assert_array_equal(spec.mask(9, 12, **{**options, "causal": True}),
                                  spec.mask(9, 12, causal=True, **OPTIONS.get(name, {})))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ALIBI)
def test_alibi_equals_float64_softmax_with_bias(name, case):
  """Values and gradients, under jit with the slopes a traced argument; the
  gradient with respect to the slopes is zero (they are a constant)."""
  batch, q_len, k_len, heads, kv_heads, causal, kind = CASES[case]
  q, k, v, kv_mask = make_inputs(batch, q_len, k_len, heads, kv_heads, kind)
  mask = reference_mask(name, batch, heads, q_len, k_len, causal, kv_mask)
  bias = reference.alibi_bias(SLOPES, q_len, k_len)
  d_out = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

  def loss(q, k, v, slopes):
    out = call(name, q, k, v, causal=causal, kv_mask=kv_mask, alibi_slopes=slopes)
    return jnp.sum(out * d_out), out

  grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
  (_, out), grads = grad_fn(q, k, v, jnp.asarray(SLOPES))
  np.testing.assert_allclose(out, reference.softmax_attention(q, k, v, mask, bias),
                             atol=2e-5, rtol=1e-5)
  for got, want in zip(grads[:3], reference.softmax_attention_vjp(q, k, v, mask, d_out, bias)):
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-4)
  assert grads[3].shape == SLOPES.shape and not np.any(np.asarray(grads[3]))
  if kind in ("empty_batch", "first_row_empty"):
    assert not np.any(np.asarray(out[1]))
  if kind == "first_row_empty":
    assert not np.any(np.asarray(out[0, 0]))
  # The bias bites: without it the output is measurably different.
  plain = reference.softmax_attention(q, k, v, mask)
  assert np.abs(np.asarray(out) - plain).max() > 0.1


@pytest.mark.parametrize("name", ALIBI)
def test_alibi_bfloat16_follows_float32(name):
  q, k, v, kv_mask = make_inputs(2, 23, 23, 4, 2, "random")
  # NumPy slopes closed over by jit: a constant of the computation.
  w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

  def loss(q, k, v):
    out = call(name, q, k, v, causal=True, kv_mask=kv_mask, alibi_slopes=SLOPES)
    return jnp.sum(out.astype(jnp.float32) * w), out

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  bf = lambda x: x.astype(jnp.bfloat16)
  (_, out32), grads32 = fn(q, k, v)
  (_, out16), grads16 = fn(bf(q), bf(k), bf(v))
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=6e-2, rtol=3e-2)
  for g16, g32 in zip(grads16, grads32):
    assert g16.dtype == jnp.bfloat16
    scale = np.abs(np.asarray(g32)).max()
    np.testing.assert_allclose(np.asarray(g16, np.float32), g32, atol=5e-2 * scale)


@pytest.mark.parametrize("name,path", [("blockwise", dict(sequential_heads=False)),
                                       ("local", dict(rows_per_step=None))],
                         ids=["blockwise_all_heads_per_step", "local_one_step"])
def test_alibi_on_the_other_code_path_equals_float64_softmax(name, path):
  """The paths OPTIONS do not take carry the bias too: blockwise's vectorised
  heads (the default off CPU) and local in one step (any L <= rows_per_step)."""
  batch, q_len, k_len, heads, kv_heads, causal, kind = CASES["causal_kvmask_empty_rows"]
  q, k, v, kv_mask = make_inputs(batch, q_len, k_len, heads, kv_heads, kind)
  mask = reference_mask(name, batch, heads, q_len, k_len, causal, kv_mask)
  bias = reference.alibi_bias(SLOPES, q_len, k_len)
  d_out = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  options = {**OPTIONS[name], **path}
  fn = lambda q, k, v, slopes: attention.get(name)(q, k, v, causal=causal, kv_mask=kv_mask,
                                                   alibi_slopes=slopes, **options)
  out, vjp = jax.vjp(jax.jit(fn), q, k, v, jnp.asarray(SLOPES))
  np.testing.assert_allclose(out, reference.softmax_attention(q, k, v, mask, bias),
                             atol=2e-5, rtol=1e-5)
  grads = vjp(d_out)
  for got, want in zip(grads[:3], reference.softmax_attention_vjp(q, k, v, mask, d_out, bias)):
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-4)
  assert not np.any(np.asarray(grads[3]))


def test_attention_with_lse_includes_the_bias():
  q, k, v, kv_mask = make_inputs(2, 21, 29, 4, 2, "first_row_empty")
  _, lse = jax.jit(lambda q, k, v: blockwise_lib.attention_with_lse(
      q, k, v, causal=True, kv_mask=kv_mask, block_q=8, block_k=8, alibi_slopes=SLOPES))(q, k, v)
  logits = np.einsum("bqhd,bkhd->bhqk", np.asarray(q, np.float64),
                     reference.expand_kv(np.asarray(k, np.float64), 4)) / np.sqrt(HEAD_DIM)
  logits = logits + reference.alibi_bias(SLOPES, 21, 29)[None]
  mask = reference.full_mask(2, 4, 21, 29, np.tril(np.ones((21, 29), bool)), kv_mask)
  logits = np.where(mask, logits, -np.inf)
  top = np.max(logits, -1, keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    want = top[..., 0] + np.log(np.sum(np.exp(logits - np.where(np.isfinite(top), top, 0)), -1))
  want = np.where(np.isfinite(top[..., 0]), want, -np.inf).transpose(0, 2, 1)  # [B, Lq, H]
  assert np.isneginf(np.asarray(lse[0, 0])).all() and np.isneginf(np.asarray(lse[1])).all()
  np.testing.assert_allclose(lse, want, atol=2e-5, rtol=1e-6)


@pytest.mark.parametrize("name", ALIBI)
@pytest.mark.parametrize("slopes, match", [
    (np.ones(5, np.float32), r"`alibi_slopes` must have shape \[heads\] = \(4,\)"),
    (np.ones((1, 4), np.float32), r"`alibi_slopes` must have shape \[heads\] = \(4,\)"),
    (np.float32(0.5), r"`alibi_slopes` must have shape \[heads\] = \(4,\)"),
    (np.ones(4, np.int32), "`alibi_slopes` must be a floating array"),
])
def test_bad_alibi_slopes_raise_before_compiling(name, slopes, match):
  q, kv = jnp.ones((2, 8, 4, 16)), jnp.ones((2, 8, 2, 16))
  fn = attention.get(name)
  with pytest.raises(ValueError, match=f"{name}: {match}"):
    fn(q, kv, kv, alibi_slopes=slopes)
  with pytest.raises(ValueError, match=match):  # under jit, traced: at trace time
    jax.jit(lambda s: fn(q, kv, kv, alibi_slopes=s)).lower(slopes)


def test_slopes_as_a_list_equal_slopes_as_an_array():
  q, k, v, _ = make_inputs(1, 9, 9, 4, 2, None)
  dense = attention.get("dense")
  np.testing.assert_array_equal(dense(q, k, v, alibi_slopes=[float(x) for x in SLOPES]),
                                dense(q, k, v, alibi_slopes=SLOPES))
