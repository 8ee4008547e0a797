"""The attention contract, checked on every registered variant.

Registering a variant is enough to be tested here: exact variants against the
float64 softmax reference under their own mask (values and gradients), every
variant for the contract's properties (GQA, kv_mask, causality, empty rows,
dtypes, jit/vmap). Options shrink the patterns so they bite at these lengths.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_research import attention
from attention_research.attention import blockwise as blockwise_lib
from tests import reference

# Small-shape options per variant; a new variant runs with its defaults.
SMALL_OPTIONS = {
    # Backward blocks unlike the forward's: each pass pads for its own.
    "blockwise": dict(block_q=8, block_k=16, bwd_block_q=16, bwd_block_k=8),
    "local": dict(window=5, block_size=8, rows_per_step=16),  # 2 blocks a step
    "strided": dict(stride=4),
    "bigbird": dict(block_size=4, num_window_blocks=3, num_global_blocks=1,
                    num_random_blocks=2, seed=3),
    "linear": dict(chunk_size=8, rows_per_step=8),  # causal chunks; non-causal steps
    "performer": dict(num_features=32, chunk_size=8, rows_per_step=8),
}

# name: (batch, q_len, k_len, heads, kv_heads, causal, key mask)
CASES = {
    "self": (2, 24, 24, 4, 4, False, None),
    "causal_gqa_odd": (2, 37, 37, 4, 2, True, None),
    "kvmask_mqa": (2, 29, 29, 4, 1, False, "random"),
    "causal_kvmask_empty_rows": (2, 33, 33, 4, 2, True, "first_row_empty"),
    "cross_kvmask": (2, 19, 31, 4, 2, False, "random"),
    "cross_causal": (2, 31, 19, 4, 2, True, None),
}
HEAD_DIM = 8
EXACT = [n for n in attention.names() if attention.variant(n).exact]


def make_inputs(batch, q_len, k_len, heads, kv_heads, kind, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(batch, q_len, heads, HEAD_DIM))
  k = rng.normal(size=(batch, k_len, kv_heads, HEAD_DIM))
  v = rng.normal(size=(batch, k_len, kv_heads, HEAD_DIM))
  kv_mask = None
  if kind is not None:
    kv_mask = rng.random((batch, k_len)) > 0.3
    if kind == "first_row_empty":
      kv_mask[0, 0] = False   # causal query 0 of batch 0 then has no key
      kv_mask[1] = False      # and all of batch 1
  cast = lambda x: jnp.asarray(x, dtype)
  return cast(q), cast(k), cast(v), None if kv_mask is None else jnp.asarray(kv_mask)


def call(name, q, k, v, **kwargs):
  return attention.get(name)(q, k, v, **SMALL_OPTIONS.get(name, {}), **kwargs)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", EXACT)
def test_exact_variant_equals_float64_softmax_under_its_mask(name, case):
  batch, q_len, k_len, heads, kv_heads, causal, kind = CASES[case]
  q, k, v, kv_mask = make_inputs(batch, q_len, k_len, heads, kv_heads, kind)
  pattern = attention.variant(name).mask(q_len, k_len, causal=causal, **SMALL_OPTIONS.get(name, {}))
  assert pattern.shape == (q_len, k_len) and pattern.dtype == bool
  mask = reference.full_mask(batch, heads, q_len, k_len, pattern, kv_mask)
  d_out = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

  def loss(q, k, v):
    out = call(name, q, k, v, causal=causal, kv_mask=kv_mask)
    return jnp.sum(out * d_out), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  np.testing.assert_allclose(out, reference.softmax_attention(q, k, v, mask), atol=2e-5, rtol=1e-5)
  for got, want in zip(grads, reference.softmax_attention_vjp(q, k, v, mask, d_out)):
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-4)
  if kind == "first_row_empty":
    assert not np.any(np.asarray(out[1])) and not np.any(np.asarray(out[0, 0]))


@pytest.mark.parametrize("name", attention.names())
def test_contract_properties(name):
  """GQA equals repeated heads; masked keys are ignored; empty rows are zeros."""
  q, k, v, kv_mask = make_inputs(2, 21, 21, 4, 2, "first_row_empty")
  fn = jax.jit(lambda q, k, v, m: call(name, q, k, v, causal=True, kv_mask=m))
  out = fn(q, k, v, kv_mask)
  assert out.shape == q.shape and out.dtype == q.dtype
  assert np.all(np.isfinite(out))
  assert not np.any(np.asarray(out[1])), "a batch whose keys are all masked must give zeros"
  assert not np.any(np.asarray(out[0, 0])), "a causal row with no real key must give zeros"

  repeated = fn(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), kv_mask)
  np.testing.assert_allclose(out, repeated, atol=1e-6)

  noise = np.random.default_rng(7).normal(size=k.shape).astype(np.float32) * 3
  hidden = ~np.asarray(kv_mask)[:, :, None, None]
  k2, v2 = k + noise * hidden, v - noise * hidden
  np.testing.assert_allclose(out, fn(q, k2, v2, kv_mask), atol=1e-6)


@pytest.mark.parametrize("name", attention.names())
def test_causal_output_ignores_future_keys(name):
  q, k, v, _ = make_inputs(1, 26, 26, 2, 2, None)
  fn = jax.jit(lambda q, k, v: call(name, q, k, v, causal=True))
  t = 13
  noise = np.random.default_rng(3).normal(size=k.shape).astype(np.float32)
  noise[:, :t + 1] = 0
  changed = fn(q, k + noise, v - noise)
  out = fn(q, k, v)
  np.testing.assert_allclose(out[:, :t + 1], changed[:, :t + 1], atol=1e-6)
  assert np.abs(np.asarray(out[:, t + 1:] - changed[:, t + 1:])).max() > 1e-3


@pytest.mark.parametrize("name", attention.names())
def test_bfloat16_follows_float32(name):
  q, k, v, kv_mask = make_inputs(2, 23, 23, 4, 2, "random")
  fn = jax.jit(lambda q, k, v: call(name, q, k, v, causal=True, kv_mask=kv_mask))
  out32 = fn(q, k, v)
  bf = lambda x: x.astype(jnp.bfloat16)
  out16 = fn(bf(q), bf(k), bf(v))
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=6e-2, rtol=3e-2)
  grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)),
                   argnums=(0, 1, 2))(bf(q), bf(k), bf(v))
  assert all(g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))
             for g in grads)


@pytest.mark.parametrize("name", attention.names())
def test_vmap_equals_loop_and_eager_equals_jit(name):
  q, k, v, kv_mask = make_inputs(2, 17, 17, 2, 1, "random")
  stacked = lambda x: jnp.stack([x, x[:, ::-1]])  # an extra leading axis of 2
  fn = lambda q, k, v, m: call(name, q, k, v, kv_mask=m)
  batched = jax.jit(jax.vmap(fn))(stacked(q), stacked(k), stacked(v), stacked(kv_mask))
  for i in range(2):
    one = fn(stacked(q)[i], stacked(k)[i], stacked(v)[i], stacked(kv_mask)[i])  # eager
    np.testing.assert_allclose(batched[i], one, atol=2e-6)


@pytest.mark.parametrize("name", attention.names())
def test_gradient_matches_finite_differences(name):
  """Directional derivative of a scalar loss, central differences in float64
  over the float32 function (step large enough for float32 rounding)."""
  q, k, v, kv_mask = make_inputs(1, 12, 12, 2, 1, "random", seed=5)
  w = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)
  loss = jax.jit(lambda q, k, v: jnp.sum(call(name, q, k, v, causal=True, kv_mask=kv_mask) * w))
  grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  rng = np.random.default_rng(4)
  dirs = [jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in (q, k, v)]
  eps = 1e-2
  plus = loss(*(x + eps * d for x, d in zip((q, k, v), dirs)))
  minus = loss(*(x - eps * d for x, d in zip((q, k, v), dirs)))
  numeric = (float(plus) - float(minus)) / (2 * eps)
  analytic = sum(float(jnp.sum(g * d)) for g, d in zip(grads, dirs))
  assert abs(numeric - analytic) <= 2e-2 * max(1.0, abs(analytic)), (numeric, analytic)


def test_registry_lists_every_family_and_rejects_unknown_names():
  assert set(attention.names()) >= {"dense", "blockwise", "local", "strided", "bigbird",
                                    "linear", "performer"}
  with pytest.raises(ValueError, match="registered: .*'dense'.*'performer'"):
    attention.get("nope")
  for name in attention.names():
    spec = attention.variant(name)
    assert spec.exact == (spec.mask is not None)


def _uniform(query, key, value, *, causal=False, kv_mask=None, sharpness=0.0):
  """A throwaway variant: softmax attention on sharpness * q.k, so equal
  weights over the visible keys at the default 0."""
  return attention.get("dense")(query * sharpness, key, value, causal=causal, kv_mask=kv_mask)


def _uniform_cost(seq_len, *, heads, kv_heads, head_dim, causal, sharpness):
  del kv_heads, causal, sharpness
  return 2.0 * heads * head_dim * seq_len  # p.v over every key; no q.k worth counting


def test_a_variant_registered_in_one_line_trains_through_the_trainer(tmp_path):
  from attention_research import data, train  # pylint: disable=g-import-not-at-top
  from tests.test_train import tiny_config  # pylint: disable=g-import-not-at-top
  attention.register("uniform_for_test", _uniform, exact=False, cost=_uniform_cost)
  try:
    config = tiny_config(tmp_path / "data", attention="uniform_for_test", total_steps=10,
                         checkpoint_every=10)
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
  finally:
    attention.unregister("uniform_for_test")
  assert result["status"] == "completed" and np.isfinite(result["final_eval"]["loss"])
  # Its FLOPs come from its registered cost (2 H D L per query), counted here
  # by hand: q/k/v/out projections, the MLP, attention, and the output layer.
  d, mlp, heads, length = config.d_model, config.mlp_dim, config.num_heads, config.max_len
  vocab = data.vocab_size(config.task, config.task_options)
  per_token = 2 * d * 3 * d + 2 * d * d + 4 * d * mlp + 2 * heads * (d // heads) * length
  assert result["flops_per_token"] == pytest.approx(config.num_layers * per_token
                                                    + 2 * d * vocab)
  assert "uniform_for_test" not in attention.names()


def check_option_path(case, name, mask_fn, **options):
  """`name` with `options` (a non-default code path) against the float64
  reference; `case` is a CASES name or a tuple laid out like CASES' values."""
  batch, q_len, k_len, heads, kv_heads, causal, kind = CASES.get(case, case)
  q, k, v, kv_mask = make_inputs(batch, q_len, k_len, heads, kv_heads, kind)
  mask = reference.full_mask(batch, heads, q_len, k_len, mask_fn(q_len, k_len, causal), kv_mask)
  d_out = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  fn = lambda q, k, v: attention.get(name)(q, k, v, causal=causal, kv_mask=kv_mask, **options)
  out, vjp = jax.vjp(jax.jit(fn), q, k, v)
  np.testing.assert_allclose(out, reference.softmax_attention(q, k, v, mask), atol=2e-5, rtol=1e-5)
  for got, want in zip(vjp(d_out), reference.softmax_attention_vjp(q, k, v, mask, d_out)):
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["causal_gqa_odd", "causal_kvmask_empty_rows", "cross_kvmask"])
def test_blockwise_with_all_heads_per_step_equals_float64_softmax(case):
  """The vectorised-heads path (the default off CPU) against the reference."""
  causal_only = lambda q_len, k_len, causal: np.tril(np.ones((q_len, k_len), bool)) if causal else None
  check_option_path(case, "blockwise", causal_only, block_q=8, block_k=16, bwd_block_q=4,
                    bwd_block_k=16, sequential_heads=False)


# Each path once, one of them causal: at 2100 tokens the float64 reference is the
# suite's costliest, and the smaller cases above cross both with causal already.
@pytest.mark.parametrize("sequential_heads, causal", [(True, False), (False, True)])
def test_blockwise_defaults_past_one_block_equal_float64_softmax(sequential_heads, causal):
  """Default block sizes at a length that takes several blocks in every pass,
  the last of them padded: forward 2 x 1056 query rows (causal 3 x 704; all
  heads at once 5 x 424), backward 5 x 512 query rows by 9 x 256 keys, the
  last block of each holding 52."""
  causal_only = lambda q_len, k_len, causal: np.tril(np.ones((q_len, k_len), bool)) if causal else None
  check_option_path((1, 2100, 2100, 2, 1, causal, "random"), "blockwise", causal_only,
                    sequential_heads=sequential_heads)


@pytest.mark.parametrize("largest", [512, 1024, 2048])
def test_default_query_blocks_are_as_few_as_allowed_and_nearly_unpadded(largest):
  for length in [1, 7, largest - 1, largest, largest + 1, 2 * largest + 9, 5 * largest - 3]:
    block = blockwise_lib._balanced_block(length, largest)
    num_blocks = -(-length // block)
    assert block <= largest and num_blocks == -(-length // largest), (length, block)
    assert num_blocks * block - length < (8 * num_blocks if num_blocks > 1 else 1), (length, block)


@pytest.mark.parametrize("case", ["causal_gqa_odd", "kvmask_mqa", "cross_kvmask", "cross_causal"])
def test_local_in_one_step_equals_float64_softmax(case):
  """`local` with every query row in one step (SMALL_OPTIONS take several)."""
  window = lambda q_len, k_len, causal: attention.local_mask(q_len, k_len, window=5, causal=causal)
  check_option_path(case, "local", window, window=5, block_size=8, rows_per_step=None)
