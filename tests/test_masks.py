"""The sparse patterns' masks against their definitions, and the cost claim.

`local_mask` and `strided_mask` are compared with brute-force loops written
from the definitions (Child et al. 2019 for strided, in the paper's own A1/A2
form). `bigbird_mask` draws random blocks, so it is checked by the structural
properties of Zaheer et al. 2020's pattern instead. Finally, the efficient
variants must not build an L x L matrix: their compiled temporary memory grows
about linearly with L, in the forward pass and in the backward pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_research import attention

SHAPES = [(20, 20), (13, 29), (29, 13)]


# ---------------------------------------------------------------------------
# Brute-force references.

def local_reference(q_len, k_len, window, causal):
  """|i - j| <= window; causal: 0 <= i - j <= window."""
  mask = np.zeros((q_len, k_len), bool)
  for i in range(q_len):
    for j in range(k_len):
      mask[i, j] = (0 <= i - j <= window) if causal else abs(i - j) <= window
  return mask


def strided_reference(q_len, k_len, stride, causal):
  """Child et al. 2019, Sec. 4.2: A_i = A1_i | A2_i (causal), where
  A1_i = {j : max(0, i - stride) <= j <= i} and A2_i = {j <= i : (i - j) % stride == 0}.
  Non-causal: |i - j| < stride or (i - j) % stride == 0.
  """
  mask = np.zeros((q_len, k_len), bool)
  for i in range(q_len):
    for j in range(k_len):
      if causal:
        a1 = max(0, i - stride) <= j <= i
        a2 = j <= i and (i - j) % stride == 0
        mask[i, j] = a1 or a2
      else:
        mask[i, j] = abs(i - j) < stride or (i - j) % stride == 0
  return mask


# ---------------------------------------------------------------------------
# local and strided.

@pytest.mark.parametrize("q_len,k_len", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_local_mask(q_len, k_len, causal):
  for window in (0, 1, 3, 40):
    mask = attention.local_mask(q_len, k_len, window=window, causal=causal)
    assert mask.shape == (q_len, k_len) and mask.dtype == bool
    np.testing.assert_array_equal(mask, local_reference(q_len, k_len, window, causal),
                                  err_msg=f"window={window}")


def test_local_mask_block_size_does_not_change_it():
  for block_size in (1, 4, 16):
    np.testing.assert_array_equal(
        attention.local_mask(21, 21, window=5, causal=True, block_size=block_size),
        local_reference(21, 21, 5, True))


@pytest.mark.parametrize("q_len,k_len", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_strided_mask(q_len, k_len, causal):
  for stride in (1, 2, 4, 7, 40):
    mask = attention.strided_mask(q_len, k_len, stride=stride, causal=causal)
    assert mask.shape == (q_len, k_len) and mask.dtype == bool
    np.testing.assert_array_equal(mask, strided_reference(q_len, k_len, stride, causal),
                                  err_msg=f"stride={stride}")


@pytest.mark.parametrize("name", ["dense", "blockwise"])
@pytest.mark.parametrize("q_len,k_len", SHAPES)
def test_full_variants_masks(name, q_len, k_len):
  mask_fn = attention.variant(name).mask
  np.testing.assert_array_equal(mask_fn(q_len, k_len, causal=True),
                                np.tril(np.ones((q_len, k_len), bool)))
  np.testing.assert_array_equal(mask_fn(q_len, k_len, causal=False),
                                np.ones((q_len, k_len), bool))


# ---------------------------------------------------------------------------
# bigbird: structure.

# (q_len, k_len, block_size, num_window_blocks, num_global_blocks, num_random_blocks, causal)
BIGBIRD_CASES = [
    (40, 40, 4, 3, 1, 2, False),
    (40, 40, 4, 3, 1, 2, True),
    (38, 26, 4, 5, 2, 1, False),   # partial last blocks, Lq > Lk
    (26, 38, 4, 3, 1, 3, True),    # Lq < Lk
    (44, 44, 4, 3, 2, 6, True),    # early rows have fewer candidates than num_random_blocks
]


@pytest.mark.parametrize("q_len,k_len,bs,nw,ng,nr,causal", BIGBIRD_CASES)
def test_bigbird_mask_structure(q_len, k_len, bs, nw, ng, nr, causal):
  mask = attention.bigbird_mask(q_len, k_len, block_size=bs, num_window_blocks=nw,
                                num_global_blocks=ng, num_random_blocks=nr, seed=5,
                                causal=causal)
  assert mask.shape == (q_len, k_len) and mask.dtype == bool
  i, j = np.arange(q_len)[:, None], np.arange(k_len)[None, :]
  visible = (j <= i) if causal else np.ones((q_len, k_len), bool)
  if causal:
    assert not np.any(mask & (j > i)), "a causal mask lets a query see a later key"

  # Global query rows see every (visible) key; every row sees the global keys.
  g = ng * bs
  np.testing.assert_array_equal(mask[:g], visible[:g])
  np.testing.assert_array_equal(mask[:, :g], visible[:, :g])

  nq, nk = -(-q_len // bs), -(-k_len // bs)
  half = nw // 2
  for a in range(nq):
    rows = slice(a * bs, (a + 1) * bs)
    window = {c for c in range(a - half, a + half + 1) if 0 <= c < nk}
    seen = set()
    for c in range(nk):
      cols = slice(c * bs, (c + 1) * bs)
      tile, tile_visible = mask[rows, cols], visible[rows, cols]
      # Block-constant: the tile is all visible positions or none of them.
      assert np.array_equal(tile, tile_visible) or not tile.any(), (a, c)
      if tile.any():
        seen.add(c)
      if c in window:
        np.testing.assert_array_equal(tile, tile_visible, err_msg=f"window block {(a, c)}")
    if a < ng:
      continue
    # The random blocks: distinct, outside window and global blocks, and as many as
    # asked for when there are enough candidates (all of them otherwise).
    extra = seen - window - set(range(ng))
    candidates = {c for c in range(ng, nk) if c not in window and (c <= a or not causal)}
    assert extra <= candidates, (a, extra, candidates)
    assert len(extra) == min(nr, len(candidates)), (a, extra, candidates)


def test_bigbird_mask_seed():
  options = dict(block_size=4, num_window_blocks=3, num_global_blocks=1, num_random_blocks=2)
  a = attention.bigbird_mask(40, 40, seed=0, **options)
  np.testing.assert_array_equal(a, attention.bigbird_mask(40, 40, seed=0, **options))
  assert not np.array_equal(a, attention.bigbird_mask(40, 40, seed=1, **options))


def test_bigbird_mask_without_random_blocks_is_window_and_global():
  mask = attention.bigbird_mask(24, 24, block_size=4, num_window_blocks=3, num_global_blocks=1,
                                num_random_blocks=0)
  a, c = np.arange(24)[:, None] // 4, np.arange(24)[None, :] // 4
  np.testing.assert_array_equal(mask, (abs(a - c) <= 1) | (a == 0) | (c == 0))


# ---------------------------------------------------------------------------
# Invalid options.

@pytest.mark.parametrize("mask_fn,options,name", [
    (attention.local_mask, dict(window=-1), "window"),
    (attention.strided_mask, dict(stride=0), "stride"),
    (attention.bigbird_mask, dict(num_window_blocks=2), "num_window_blocks"),
    (attention.bigbird_mask, dict(block_size=0), "block_size"),
])
def test_invalid_options_raise(mask_fn, options, name):
  with pytest.raises(ValueError, match=name):
    mask_fn(16, 16, **options)
  # The attention function rejects the same option, before computing anything.
  fn = {attention.local_mask: attention.get("local"), attention.strided_mask: attention.get("strided"),
        attention.bigbird_mask: attention.get("bigbird")}[mask_fn]
  x = jnp.ones((1, 16, 2, 8))
  with pytest.raises(ValueError, match=name):
    fn(x, x, x, **options)


# ---------------------------------------------------------------------------
# Cost: no L x L matrix, forward or backward. Compiled only, never run.

def _temp_bytes(name, length, causal, backward, options):
  x = jax.ShapeDtypeStruct((1, length, 2, 16), jnp.float32)
  forward = lambda q, k, v: attention.get(name)(q, k, v, causal=causal, **options)
  fn = forward
  if backward:
    fn = jax.grad(lambda q, k, v: forward(q, k, v).sum(), argnums=(0, 1, 2))
  analysis = jax.jit(fn).lower(x, x, x).compile().memory_analysis()
  assert analysis is not None, "this backend reports no memory analysis"
  return analysis.temp_size_in_bytes


def test_memory_measure_sees_a_quadratic_variant():
  """The control: dense attention's temporaries do grow 4x from 2048 to 4096."""
  small, large = (_temp_bytes("dense", n, False, False, {}) for n in (2048, 4096))
  assert large >= 3.5 * small and large >= 4096 * 4096 * 4, (small, large)


@pytest.mark.parametrize("name,causal,options", [
    ("local", False, dict(window=32)),
    ("bigbird", True, dict(block_size=32)),
    ("strided", True, dict(stride=64)),
    ("linear", True, {}),
    ("performer", False, dict(num_features=64)),
    ("blockwise", True, dict(block_q=128, block_k=128)),
    ("blockwise", False, {}),  # the default blocks, 2048 x 512 forward on CPU
])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_memory_is_not_quadratic(name, causal, options, backward):
  small, large = (_temp_bytes(name, n, causal, backward, options) for n in (2048, 4096))
  one_matrix = 4096 * 4096 * 4  # bytes of one float32 L x L matrix at L = 4096
  assert 0 < small and large <= 2.5 * small, (small, large)
  assert large < one_matrix, (large, one_matrix)


def test_sparse_variants_are_known_by_their_cost_and_say_when_they_are_dense():
  assert [n for n in attention.names() if attention.is_sparse(n)] == ["local", "strided",
                                                                       "bigbird"]
  for causal in (False, True):
    # Up to 4096 tokens the mask decides; past it, the cost (keys per query vs L).
    assert attention.covers_every_key("local", 64, causal=causal)             # window 128
    assert not attention.covers_every_key("local", 64, causal=causal, options={"window": 8})
    assert attention.covers_every_key("local", 5000, causal=causal, options={"window": 5000})
    assert not attention.covers_every_key("local", 5000, causal=causal)
    assert attention.covers_every_key("strided", 100, causal=causal)          # stride 128
    assert not attention.covers_every_key("strided", 100, causal=causal, options={"stride": 5})
    assert attention.covers_every_key("bigbird", 64, causal=causal)           # 8 blocks of 64
    assert not attention.covers_every_key("bigbird", 1024, causal=causal)
    assert not attention.covers_every_key("dense", 64, causal=causal)         # not sparse
  # One key short of the full pattern is sparse: the mask, not a threshold, decides.
  assert not attention.covers_every_key("local", 64, causal=False, options={"window": 62})
  assert attention.covers_every_key("local", 64, causal=False, options={"window": 63})
