"""Bad input is a ValueError that names the argument, raised while tracing,
before anything compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_research import attention

Q = jnp.ones((2, 8, 4, 16))
KV = jnp.ones((2, 8, 2, 16))


@pytest.mark.parametrize("name", attention.names())
@pytest.mark.parametrize("args, kwargs, match", [
    ((jnp.ones((8, 4, 16)), KV, KV), {}, "`query` must have rank 4"),
    ((Q, jnp.ones((2, 8, 2)), KV), {}, "`key` must have rank 4"),
    ((Q, jnp.ones((2, 8, 3, 16)), jnp.ones((2, 8, 3, 16))), {}, r"heads \(4\) must be a multiple"),
    ((Q, KV, jnp.ones((2, 9, 2, 16))), {}, "`key` and `value` must have the same shape"),
    ((Q, jnp.ones((3, 8, 2, 16)), jnp.ones((3, 8, 2, 16))), {}, "`key` batch 3"),
    ((Q, jnp.ones((2, 8, 2, 8)), jnp.ones((2, 8, 2, 8))), {}, "`key` head_dim 8"),
    ((Q, KV, KV), {"kv_mask": jnp.ones((2, 7), bool)}, r"`kv_mask` must have shape \[batch, k_len\]"),
    ((Q, KV, KV), {"kv_mask": jnp.ones((2, 8))}, "`kv_mask` must be bool"),
    ((Q.astype(jnp.int32), KV, KV), {}, "`query` must be a floating array"),
    ((Q, KV, KV), {"not_an_option": 1}, r"does not take option\(s\) \['not_an_option'\]"),
    ((Q, KV, KV), {"causal": "no"}, "`causal` must be a Python bool"),
])
def test_contract_violations_raise_before_compiling(name, args, kwargs, match):
  fn = attention.get(name)
  with pytest.raises(ValueError, match=match):
    fn(*args, **kwargs)
  with pytest.raises(ValueError, match=match):  # under jit: at trace time
    jax.jit(lambda *a: fn(*a, **kwargs)).lower(*args)


@pytest.mark.parametrize("name, options, match", [
    ("blockwise", {"block_q": 0}, "`block_q` must be a positive integer"),
    ("blockwise", {"block_k": -4}, "`block_k` must be a positive integer"),
    ("blockwise", {"block_k": 2.5}, "`block_k` must be a positive integer"),
    ("blockwise", {"bwd_block_q": 0}, "`bwd_block_q` must be a positive integer"),
    ("blockwise", {"bwd_block_k": 1.0}, "`bwd_block_k` must be a positive integer"),
    ("local", {"window": -1}, "`window` must be an integer >= 0"),
    ("local", {"block_size": 0}, "`block_size` must be a positive integer"),
    ("local", {"rows_per_step": 0}, "`rows_per_step` must be a positive integer"),
    ("strided", {"stride": 0}, "`stride` must be a positive integer"),
    ("bigbird", {"block_size": 0}, "`block_size` must be a positive integer"),
    ("bigbird", {"num_window_blocks": 2}, "`num_window_blocks` must be odd"),
    ("bigbird", {"num_random_blocks": -1}, "`num_random_blocks` must be an integer >= 0"),
    ("linear", {"feature_map": "tanh"}, r"`feature_map` must be one of \['elu', 'relu'\]"),
    ("linear", {"rows_per_step": -1}, "`rows_per_step` must be a positive integer"),
    ("performer", {"num_features": 0}, "`num_features` must be a positive integer"),
    ("performer", {"chunk_size": 0}, "`chunk_size` must be a positive integer"),
    ("dense", {"mask": jnp.ones((3, 8, 8), bool)}, "`mask` of shape"),
    ("dense", {"mask": jnp.ones((8, 8))}, "`mask` must be bool"),
    ("dense", {"block_q": 8}, r"does not take option\(s\) \['block_q'\]"),
])
def test_bad_options_name_the_option(name, options, match):
  with pytest.raises(ValueError, match=match):
    attention.get(name)(Q, KV, KV, **options)


def test_dense_mask_broadcasts_like_its_documented_shape():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 5, 4, 8), (2, 6, 2, 8), (2, 6, 2, 8)))
  pattern = rng.random((5, 6)) > 0.4
  per_head = jnp.broadcast_to(jnp.asarray(pattern), (2, 4, 5, 6))
  np.testing.assert_allclose(attention.get("dense")(q, k, v, mask=jnp.asarray(pattern)),
                             attention.get("dense")(q, k, v, mask=per_head), atol=1e-7)
  # A mask that differs per head really is applied per head.
  head_mask = jnp.asarray(rng.random((1, 4, 1, 6)) > 0.5)
  out = attention.get("dense")(q, k, v, mask=head_mask)
  for h in range(4):
    one_head = attention.get("dense")(q[:, :, h:h + 1], k[:, :, h // 2:h // 2 + 1],
                               v[:, :, h // 2:h // 2 + 1], mask=head_mask[:, h:h + 1])
    np.testing.assert_allclose(out[:, :, h:h + 1], one_head, atol=1e-6)
