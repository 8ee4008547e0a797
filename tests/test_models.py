"""The Flax models: numbers against flax, NumPy and XLA, at tiny sizes.

d_model 32, 2 layers, length 16 unless a test needs otherwise; grouped-query
attention (4 query heads, 2 kv heads) wherever the model is built from a config.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from attention_research import attention
from attention_research import models
from attention_research.models import attention_layer
from attention_research.models import positional

VOCAB, CLASSES, LENGTH, BATCH = 20, 3, 16, 2


def _config(**overrides):
  c = dict(model="classifier", num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
           mlp_dim=64, max_len=LENGTH, pos="sinusoidal", pooling="mean")
  c.update(overrides)
  return ml_collections.ConfigDict(c)


def _batch(seed=0, shape=(BATCH, LENGTH), real=(11, 16)):
  """Tokens and a right-padded mask with `real[b]` real tokens in row b."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, shape).astype(np.int32)
  real = np.asarray(real).reshape((-1,) + (1,) * (len(shape) - 1))   # one length per row
  mask = np.broadcast_to(np.arange(shape[-1]) < real, shape)
  return jnp.asarray(tokens), jnp.asarray(mask)


def _params(module, *args, seed=0):
  """Random float32 parameters in `module`'s tree: normal(0, 0.2), LayerNorm scales 1.

  Tests whose claim holds for any weights use these: they need no compiled
  init (threefry initialisers take seconds to compile on CPU).
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]
  rng = np.random.default_rng(seed)
  def leaf(path, s):
    if path[-1].key == "scale":
      return jnp.ones(s.shape, s.dtype)
    return jnp.asarray(rng.normal(0.0, 0.2, s.shape), s.dtype)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _init(model, *args):
  """The model's own initialisers (the cheap-to-compile RBG generator)."""
  return jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), *args)["params"]


# ------------------------------------------------------------ attention layer

def _mha_inputs():
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, 32))
  mask = jnp.arange(LENGTH)[None] < jnp.array([[10], [16]])
  return x, mask


def test_multi_head_attention_matches_flax():
  x, mask = _mha_inputs()
  ours = attention_layer.MultiHeadAttention(num_heads=4, attention="dense")
  theirs = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32, dropout_rate=0.0,
                                           deterministic=True)
  params = _params(ours, x)
  assert (jax.tree.map(jnp.shape, params) ==
          jax.tree.map(jnp.shape, jax.eval_shape(theirs.init, jax.random.key(0), x)["params"]))

  @jax.jit
  def both(params, x, mask):
    return (ours.apply({"params": params}, x), ours.apply({"params": params}, x, mask),
            theirs.apply({"params": params}, x),
            theirs.apply({"params": params}, x, mask=mask[:, None, None, :]))
  ours_full, ours_masked, theirs_full, theirs_masked = both(params, x, mask)
  np.testing.assert_allclose(ours_full, theirs_full, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(ours_masked, theirs_masked, atol=2e-5, rtol=2e-5)
  assert np.abs(ours_masked[0] - ours_full[0]).max() > 1e-3   # the mask mattered


def _numpy_mha(params, x, kv_mask, *, heads, kv_heads, rope=False, slopes=None, causal=False):
  """Float64 reference: projections, optional rotation (complex form) and bias."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  proj = lambda n: np.einsum("bld,dhk->blhk", x, p[n]["kernel"]) + p[n]["bias"]
  q, k, v = proj("query"), proj("key"), proj("value")
  length, dim = x.shape[1], q.shape[-1]
  if rope:  # pair (2i, 2i+1) as the complex number x_2i + i x_2i+1, times e^{i p theta_i}
    theta = 10000.0 ** (-np.arange(0, dim, 2) / dim)
    phase = np.exp(1j * np.arange(length)[:, None] * theta)[None, :, None, :]
    def rotate(a):
      z = (a[..., 0::2] + 1j * a[..., 1::2]) * phase
      return np.stack([z.real, z.imag], -1).reshape(a.shape)
    q, k = rotate(q), rotate(k)
  k, v = np.repeat(k, heads // kv_heads, 2), np.repeat(v, heads // kv_heads, 2)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dim)
  distance = np.abs(np.arange(length)[:, None] - np.arange(length)[None])
  if slopes is not None:
    logits = logits - np.asarray(slopes, np.float64)[:, None, None] * distance
  allowed = np.ones((length, length), bool)[None, None] & np.asarray(kv_mask)[:, None, None, :]
  if causal:
    allowed = allowed & np.tril(np.ones((length, length), bool))
  logits = np.where(allowed, logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  out = np.einsum("bhqk,bkhd->bqhd", w / w.sum(-1, keepdims=True), v)
  return np.einsum("blhk,hkd->bld", out, p["out"]["kernel"]) + p["out"]["bias"]


@pytest.mark.parametrize("causal", [False, True])
def test_rope_in_attention_against_numpy(causal):
  x, mask = _mha_inputs()
  layer = attention_layer.MultiHeadAttention(num_heads=4, num_kv_heads=2, attention="dense",
                                             use_rope=True, causal=causal)
  params = _params(layer, x)
  want = _numpy_mha(params, x, mask, heads=4, kv_heads=2, rope=True, causal=causal)
  got = jax.jit(layer.apply)({"params": params}, x, mask)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_alibi_slopes_are_the_papers():
  np.testing.assert_allclose(positional.alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=1e-7)


@pytest.mark.parametrize("name, options", [
    ("dense", ()), ("blockwise", (("block_q", 8), ("block_k", 8))),
    ("local", (("window", LENGTH), ("block_size", 8))),   # the window covers every key
])
def test_alibi_in_attention_against_numpy(name, options):
  x, mask = _mha_inputs()
  def layer(use_alibi):
    return attention_layer.MultiHeadAttention(num_heads=4, num_kv_heads=2, attention=name,
                                              attention_options=options, use_alibi=use_alibi)
  params = _params(layer(True), x)
  got, plain = jax.jit(lambda p, x, m: (layer(True).apply({"params": p}, x, m),
                                        layer(False).apply({"params": p}, x, m)))(params, x, mask)
  want = _numpy_mha(params, x, mask, heads=4, kv_heads=2, slopes=2.0 ** -(2.0 * np.arange(1, 5)))
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
  assert np.abs(got - plain).max() > 1e-2


def test_attention_dropout_drops_the_attention_output():
  x, mask = _mha_inputs()
  layer = attention_layer.MultiHeadAttention(num_heads=4, dropout_rate=0.5)
  params = _params(layer, x)
  # An identity out projection shows the dropped [B, L, H, D] attention output itself.
  params["out"]["kernel"] = jnp.eye(32).reshape(4, 8, 32)
  params["out"]["bias"] = jnp.zeros(32)
  keep, dropped = jax.jit(lambda p, x, m, key: (
      layer.apply({"params": p}, x, m),
      layer.apply({"params": p}, x, m, deterministic=False, rngs={"dropout": key})))(
          params, x, mask, jax.random.key(3, impl="unsafe_rbg"))
  zero = np.isclose(np.asarray(dropped), 0.0)
  assert 0.4 < zero.mean() < 0.6                       # about half the [B, L, H, D] entries
  np.testing.assert_allclose(np.where(zero, 0.0, dropped), np.where(zero, 0.0, 2 * keep),
                             rtol=1e-5, atol=1e-6)     # the rest scaled by 1 / (1 - rate)


# ----------------------------------------------------------------- positional

def test_sinusoidal_matches_the_formula():
  table = np.asarray(positional.sinusoidal(LENGTH, 10))
  assert table.shape == (LENGTH, 10)
  assert np.asarray(positional.sinusoidal(4, 7)).shape == (4, 7)   # odd: ends with a sine
  np.testing.assert_allclose(positional.sinusoidal(4, 7)[:, 6],
                             np.sin(np.arange(4) / 10000 ** (6 / 7)), atol=1e-6)
  for pos in range(LENGTH):
    for i in range(5):
      angle = pos / 10000 ** (2 * i / 10)
      assert table[pos, 2 * i] == pytest.approx(np.sin(angle), abs=1e-6)
      assert table[pos, 2 * i + 1] == pytest.approx(np.cos(angle), abs=1e-6)


def test_rope_preserves_norms_and_depends_on_relative_position():
  q, k = jax.random.normal(jax.random.key(0), (2, 1, 64, 2, 8))
  rot_q, rot_k = positional.rope(q), positional.rope(k)          # positions 0..63
  np.testing.assert_allclose(jnp.linalg.norm(rot_q, axis=-1), jnp.linalg.norm(q, axis=-1),
                             rtol=1e-5)
  # q at position i, k at j: q.k depends on i - j only (shift both by s).
  # The same q and k vectors placed at every position 0..63:
  q_at = np.asarray(positional.rope(jnp.broadcast_to(q[:, :1], (1, 64, 2, 8))))[0]
  k_at = np.asarray(positional.rope(jnp.broadcast_to(k[:, :1], (1, 64, 2, 8))))[0]
  dot = lambda i, j: float(np.sum(q_at[i] * k_at[j]))
  for i, j, s in ((3, 1, 7), (0, 5, 20), (10, 10, 33)):
    assert dot(i, j) == pytest.approx(dot(i + s, j + s), rel=1e-4, abs=1e-4)
  assert abs(dot(3, 1) - dot(3, 2)) > 1e-3  # and it does depend on i - j
  # Explicit positions equal the default ones.
  np.testing.assert_allclose(positional.rope(q, positions=jnp.arange(64)), rot_q)


# --------------------------------------------------------------------- models

POSITIONS = ["none", "sinusoidal", "learned", "rope",
             "alibi"]


@pytest.mark.parametrize("pos", POSITIONS)
def test_every_model_runs_and_ignores_padding(pos):
  """Under jit, with GQA: shapes, dtypes, and what the masks promise.

  Classifier (mean pooling) and dual encoder (CLS pooling): new tokens at
  masked positions change nothing. Decoder: logits up to position `cut` do not
  depend on the tokens after it.
  """
  tokens, mask = _batch()
  pair, pair_mask = _batch(1, (BATCH, 2, LENGTH), real=(9, 16))
  full, cut = jnp.ones_like(mask), 6
  classifier = models.build(_config(pos=pos, pooling="mean"), vocab_size=VOCAB,
                            num_classes=CLASSES)
  dual = models.build(_config(model="dual_encoder", pos=pos, pooling="cls"), vocab_size=VOCAB,
                      num_classes=CLASSES)
  decoder = models.build(_config(model="decoder", pos=pos, tie_embeddings=pos == "rope"),
                         vocab_size=VOCAB)
  params = (_params(classifier, tokens, mask), _params(dual, pair, pair_mask),
            _params(decoder, tokens, full))

  # Each model sees its batch twice: as is, and with the tokens it must ignore changed.
  twice = lambda a, b: jnp.concatenate([a, b])
  inputs = (
      (twice(tokens, jnp.where(mask, tokens, (tokens + 7) % VOCAB)), twice(mask, mask)),
      (twice(pair, jnp.where(pair_mask, pair, (pair + 3) % VOCAB)), twice(pair_mask, pair_mask)),
      (twice(tokens, tokens.at[:, cut + 1:].set((tokens[:, cut + 1:] + 5) % VOCAB)),
       twice(full, full)))

  @jax.jit
  def run(params, inputs):
    return [m.apply({"params": p}, *x) for m, p, x in zip((classifier, dual, decoder), params,
                                                            inputs)]
  (c_logits, d_logits, lm_logits) = run(params, inputs)
  assert c_logits.shape == (2 * BATCH, CLASSES) and c_logits.dtype == jnp.float32
  assert d_logits.shape == (2 * BATCH, CLASSES) and d_logits.dtype == jnp.float32
  assert lm_logits.shape == (2 * BATCH, LENGTH, VOCAB) and lm_logits.dtype == jnp.float32
  assert all(np.isfinite(x).all() for x in (c_logits, d_logits, lm_logits))
  np.testing.assert_allclose(c_logits[BATCH:], c_logits[:BATCH], atol=1e-5)
  np.testing.assert_allclose(d_logits[BATCH:], d_logits[:BATCH], atol=1e-5)
  np.testing.assert_allclose(lm_logits[BATCH:, :cut + 1], lm_logits[:BATCH, :cut + 1], atol=1e-5)
  # ... while the tokens that count do change the outputs.
  assert np.abs(lm_logits[BATCH:, cut + 1:] - lm_logits[:BATCH, cut + 1:]).max() > 1e-3
  assert np.abs(c_logits[:1] - c_logits[1:2]).max() > 1e-3


def test_cls_classifier_ignores_padding_with_learned_positions():
  tokens, mask = _batch(2)
  model = models.build(_config(pos="learned", pooling="cls", attention="local",
                               attention_options={"window": 4}),
                       vocab_size=VOCAB, num_classes=CLASSES)
  params = _params(model, tokens, mask)
  assert params["encoder"]["embed"]["embedding"].shape == (VOCAB + 1, 32)   # + the CLS row
  assert params["encoder"]["positions"]["table"].shape == (LENGTH + 1, 32)
  other = jnp.where(mask, tokens, 0)
  logits = jax.jit(model.apply)({"params": params}, jnp.concatenate([tokens, other]),
                                jnp.concatenate([mask, mask]))
  np.testing.assert_allclose(logits[BATCH:], logits[:BATCH], atol=1e-5)


def test_tied_decoder_logits_are_the_embedding_products():
  tokens, _ = _batch(3)
  full = jnp.ones_like(tokens, bool)
  model = models.build(_config(model="decoder", tie_embeddings=True), vocab_size=VOCAB)
  params = _params(model, tokens, full)
  assert "logits" not in params
  logits, state = jax.jit(lambda p, x, m: model.apply({"params": p}, x, m,
                                                      capture_intermediates=True))(
                                                          params, tokens, full)
  hidden = state["intermediates"]["encoder"]["__call__"][0]
  want = np.einsum("bld,vd->blv", hidden, params["encoder"]["embed"]["embedding"])
  np.testing.assert_allclose(logits, want, atol=1e-5, rtol=1e-5)


def test_without_positions_mean_pooling_cannot_see_order():
  tokens, _ = _batch(4)
  full = jnp.ones_like(tokens, bool)
  permuted = tokens[:, np.random.default_rng(0).permutation(LENGTH)]
  for pos, invariant in (("none", True), ("sinusoidal", False)):
    model = models.build(_config(pos=pos, num_kv_heads=None), vocab_size=VOCAB,
                         num_classes=CLASSES)
    logits = jax.jit(model.apply)({"params": _params(model, tokens, full)},
                                  jnp.concatenate([tokens, permuted]),
                                  jnp.concatenate([full, full]))
    a, b = logits[:BATCH], logits[BATCH:]
    assert np.allclose(a, b, atol=1e-5) == invariant, pos
    if not invariant:
      assert np.abs(a - b).max() > 1e-3


def test_small_init_scales_residual_projections_by_depth():
  num_layers = 3
  model = models.build(_config(init="small", num_layers=num_layers, d_model=64, mlp_dim=128),
                       vocab_size=VOCAB, num_classes=CLASSES)
  tokens, mask = _batch()
  params = _init(model, tokens, mask)
  std = lambda path: float(np.std(path))
  scaled = 0.02 / np.sqrt(2 * num_layers)
  for i in range(num_layers):
    block = params["encoder"][f"block_{i}"]
    assert std(block["attention"]["query"]["kernel"]) == pytest.approx(0.02, rel=0.1)
    assert std(block["mlp_in"]["kernel"]) == pytest.approx(0.02, rel=0.1)
    assert std(block["attention"]["out"]["kernel"]) == pytest.approx(scaled, rel=0.1)
    assert std(block["mlp_out"]["kernel"]) == pytest.approx(scaled, rel=0.1)
  assert std(params["encoder"]["embed"]["embedding"]) == pytest.approx(0.02, rel=0.15)


@pytest.mark.parametrize("name, want_std", [
    ("xavier_uniform", np.sqrt(2 / (256 + 128))), ("he_normal", np.sqrt(2 / 256)),
    ("lecun_normal", np.sqrt(1 / 256))])
def test_named_initialisers_have_their_std_and_no_depth_scaling(name, want_std):
  init, residual = models.transformer.kernel_inits(models.resolve(_config(init=name)))
  assert init is residual or init == residual
  sample = init(jax.random.key(0), (256, 128))            # fan_in 256, fan_out 128
  assert float(np.std(sample)) == pytest.approx(want_std, rel=0.05)


def test_bfloat16_compute_is_close_to_float32():
  tokens, mask = _batch(5)
  f32 = models.build(_config(), vocab_size=VOCAB, num_classes=CLASSES)
  bf16 = models.build(_config(compute_dtype="bfloat16"), vocab_size=VOCAB, num_classes=CLASSES)
  params = _params(bf16, tokens, mask)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  want, got = jax.jit(lambda p, x, m: (f32.apply({"params": p}, x, m),
                                       bf16.apply({"params": p}, x, m)))(params, tokens, mask)
  assert got.dtype == jnp.float32
  scale = float(np.abs(want).max())
  assert float(np.abs(got - want).max()) < 0.05 * scale
  assert not np.array_equal(got, want)   # it did compute in bfloat16


def test_num_params_matches_a_hand_count():
  d, heads, kv_heads, mlp, layers = 8, 2, 1, 16, 2
  config = _config(num_layers=layers, d_model=d, num_heads=heads, num_kv_heads=kv_heads,
                   mlp_dim=mlp, pos="learned", pooling="cls")
  model = models.build(config, vocab_size=VOCAB, num_classes=CLASSES)
  params = jax.eval_shape(model.init, jax.random.key(0), *_batch())["params"]
  head_dim = d // heads
  attn = (d * heads * head_dim + heads * head_dim              # query
          + 2 * (d * kv_heads * head_dim + kv_heads * head_dim)  # key, value
          + heads * head_dim * d + d)                           # out
  block = attn + (d * mlp + mlp) + (mlp * d + d) + 2 * (2 * d)  # + MLP + two LayerNorms
  want = ((VOCAB + 1) * d + (LENGTH + 1) * d                    # tokens + CLS, positions
          + layers * block + 2 * d + (d * CLASSES + CLASSES))   # final LayerNorm, head
  assert models.num_params(params) == want                       # ShapeDtypeStructs
  assert models.num_params(jax.tree.map(lambda s: np.zeros(s.shape), params)) == want
  assert models.num_block_params(params) == layers * block       # Kaplan's non-embedding N


def test_flops_per_token_matches_xla():
  """Matmul-dominated shapes (XLA also counts elementwise work, which we leave out),
  and one where the attention term dominates (length 256, d_model 32)."""
  vocab = 32
  for config in (_config(d_model=64, num_heads=4, num_kv_heads=None, mlp_dim=256,
                         max_len=64),
                 _config(d_model=32, num_heads=2, num_kv_heads=None, mlp_dim=64, max_len=256),
                 _config(model="decoder", d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=256,
                         max_len=64, head_dim=32),
                 _config(model="dual_encoder", pooling="cls", d_model=64, num_heads=4,
                         mlp_dim=256, max_len=64)):
    model = models.build(config, vocab_size=vocab, num_classes=CLASSES)
    length = config.max_len
    shape = (BATCH, 2, length) if config.model == "dual_encoder" else (BATCH, length)
    tokens = jax.ShapeDtypeStruct(shape, jnp.int32)
    mask = jax.ShapeDtypeStruct(shape, jnp.bool_)
    variables = jax.eval_shape(model.init, jax.random.key(0), tokens, mask)
    cost = jax.jit(model.apply).lower(variables, tokens, mask).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    ours = models.flops_per_token(config, length, vocab_size=vocab, num_classes=CLASSES)
    xla = cost["flops"] / np.prod(shape)
    if config.model == "decoder":
      # XLA's causal dense attention computes the whole L x L square; ours counts
      # the (L + 1) / 2 keys a query sees, so add the skipped half back.
      h, d = config.num_heads, config.head_dim
      ours += config.num_layers * 4 * h * d * (length - (length + 1) / 2)
    assert ours == pytest.approx(xla, rel=0.15), config.model


def test_flops_attention_term_follows_the_variant():
  s = models.resolve(_config(max_len=1024, attention="local", attention_options={"window": 8}))
  local = models.attention_flops_per_query(s, 1024, causal=False)
  assert local == 4 * 4 * 8 * 17                       # H D (2 window + 1)
  dense = models.attention_flops_per_query(
      models.resolve(_config(max_len=1024)), 1024, causal=False)
  assert dense == 4 * 4 * 8 * 1024
  causal = models.attention_flops_per_query(
      models.resolve(_config(max_len=1024)), 1024, causal=True)
  assert causal == 4 * 4 * 8 * 1025 / 2
  linear = models.attention_flops_per_query(
      models.resolve(_config(max_len=1024, attention="linear")), 1024, causal=False)
  assert linear == 2 * 8 * 8 * (4 + 2) + 2 * 8 * 4   # F = D = 8, no L in it


# ----------------------------------------------------------------- validation

@pytest.mark.parametrize("overrides, match", [
    ({"model": "gpt"}, r"config\.model must be one of \['classifier', 'dual_encoder', 'decoder'\]"),
    ({"attention": "flash"}, r"config\.attention must be one of .*'dense'.*'performer'"),
    ({"pos": "relative"}, r"config\.pos must be one of \['none', 'sinusoidal', 'learned'"),
    ({"init": "orthogonal"}, r"config\.init must be one of \['xavier_uniform'"),
    ({"activation": "swish"}, r"config\.activation must be one of \['gelu', 'relu'\]"),
    ({"norm": "sandwich"}, r"config\.norm must be one of \['pre', 'post'\]"),
    ({"pooling": "max"}, r"config\.pooling must be one of \['cls', 'mean'\]"),
    ({"compute_dtype": "float16"},
     r"config\.compute_dtype must be one of \['float32', 'bfloat16'\]"),
    ({"attention": "local", "attention_options": {"stride": 4}},
     r"config\.attention_options: attention 'local' does not take \['stride'\]; it takes"),
    ({"attention": "local", "attention_options": {"window": -1}},
     r"config\.attention_options for 'local': .*`window`"),
    ({"num_kv_heads": None, "d_model": 30},
     r"config\.d_model \(30\) must be divisible by config\.num_heads"),
    ({"num_kv_heads": 3},
     r"config\.num_heads \(4\) must be a multiple of config\.num_kv_heads \(3\)"),
    ({"num_layers": 0}, r"config\.num_layers must be a positive integer"),
    ({"d_model": -32}, r"config\.d_model must be a positive integer"),
    ({"mlp_dim": 0}, r"config\.mlp_dim must be a positive integer"),
    ({"head_dim": 0}, r"config\.head_dim must be a positive integer"),
    ({"max_len": 0}, r"config\.max_len must be a positive integer"),
    ({"dropout": 1.0}, r"config\.dropout must be a rate in \[0, 1\)"),
    ({"pos": "learned", "max_position": 15}, r"config\.max_position \(15\) is smaller"),
    ({"pos": "learned", "pooling": "cls", "max_position": 16},
     r"config\.max_position \(16\).*max_len=16 \+ 1 CLS token"),
    ({"pos": "rope", "head_dim": 7}, r"config\.head_dim \(7\) must be even"),
    ({"pos": "alibi", "attention": "linear"},
     r"config\.pos='alibi' needs .*'linear' does not; these do: \[.*\]"),
    ({"tie_embeddings": True}, r"config\.tie_embeddings .* True only for model='decoder'"),
    ({"rope_base": 0.0}, r"config\.rope_base must be a positive number"),
    ({"num_kv_heads": 0}, r"config\.num_kv_heads must be a positive integer"),
    ({"attention": "local", "attention_options": {"window": [1, 2]}},
     r"config\.attention_options\.window must be a number"),
    ({"attention_options": {"alibi_slopes": 0.5}}, r"config\.attention_options: .*pos='alibi'"),
])
def test_bad_config_raises_naming_the_field(overrides, match):
  with pytest.raises(ValueError, match=match):
    models.validate_config(_config(**overrides))
  with pytest.raises(ValueError, match=match):
    models.build(_config(**overrides), vocab_size=VOCAB, num_classes=CLASSES)


def test_missing_fields_and_build_arguments():
  config = _config()
  del config["mlp_dim"]
  with pytest.raises(ValueError, match=r"missing the required field `mlp_dim`"):
    models.validate_config(config)
  with pytest.raises(ValueError, match=r"model 'classifier' needs `num_classes`"):
    models.build(_config(), vocab_size=VOCAB)
  with pytest.raises(ValueError, match=r"`vocab_size` must be a positive integer"):
    models.build(_config(model="decoder"), vocab_size=0)
  # Optional fields fall back to models.DEFAULTS.
  minimal = ml_collections.ConfigDict(dict(model="decoder", num_layers=1, d_model=8, num_heads=2,
                                           mlp_dim=16, max_len=4))
  s = models.resolve(minimal)
  assert (s.attention, s.pos, s.num_kv_heads, s.head_dim, s.max_position) == (
      models.DEFAULTS["attention"], models.DEFAULTS["pos"], 2, 4, 4)


def test_alibi_validation_lists_the_variants_that_take_it():
  takes = [n for n in attention.names() if "alibi_slopes" in attention.variant(n).options]
  assert takes == ["dense", "blockwise", "local"]
  with pytest.raises(ValueError) as error:
    models.validate_config(_config(pos="alibi", attention="performer"))
  assert str(takes) in str(error.value) and "'performer'" in str(error.value)
