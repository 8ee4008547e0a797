"""The attention patterns of the exact variants, as predicates and as masks.

A pattern is a predicate `allowed(i, j)` on query position i and key position
j that works on NumPy and jax arrays alike. The sparse variants evaluate it on
the few key blocks they gather; the `*_mask` functions evaluate it on the full
grid and return a NumPy bool [q_len, k_len], so that anyone can check a variant
against `dense(q, k, v, mask=...)`. Causal patterns are top-left aligned:
query i is at position i, as is key j.
"""

import numpy as np

from attention_research.attention import common


def local_allowed(i, j, *, window, causal):
  """Sliding window: |i - j| <= window; causal: 0 <= i - j <= window."""
  d = i - j
  return ((d >= 0) if causal else (d >= -window)) & (d <= window)


def strided_allowed(i, j, *, stride, causal):
  """Sparse Transformer's strided pattern (Child et al. 2019, Sec. 4.2).

  Causal (the paper's form): key j is among the `stride` positions ending at
  i (0 <= i - j < stride), or a multiple of `stride` back ((i - j) % stride
  == 0, i - j >= 0). Non-causal (our symmetric extension): |i - j| < stride,
  or (i - j) % stride == 0 in either direction.
  """
  d = i - j
  band = (d >= 0) & (d < stride) if causal else (d > -stride) & (d < stride)
  column = (d % stride) == 0
  if causal:
    column = column & (d >= 0)
  return band | column


def _grid(q_len, k_len):
  return np.arange(q_len)[:, None], np.arange(k_len)[None, :]


def full_mask(q_len, k_len, *, causal=False):
  """The pattern of dense and blockwise attention: everything, or j <= i."""
  i, j = _grid(q_len, k_len)
  return (j <= i) if causal else np.ones((q_len, k_len), bool)


def local_mask(q_len, k_len, *, window=128, causal=False, block_size=None, rows_per_step=None):
  """[q_len, k_len] bool mask of `local` (block_size and rows_per_step do not change it)."""
  common.non_negative_int("local", "window", window)
  i, j = _grid(q_len, k_len)
  return np.asarray(local_allowed(i, j, window=window, causal=causal))


def strided_mask(q_len, k_len, *, stride=128, causal=False):
  """[q_len, k_len] bool mask of `strided`."""
  common.positive_int("strided", "stride", stride)
  i, j = _grid(q_len, k_len)
  return np.asarray(strided_allowed(i, j, stride=stride, causal=causal))


def bigbird_key_blocks(num_q_blocks, num_k_blocks, *, num_window_blocks, num_global_blocks,
                       num_random_blocks, seed, causal):
  """Key blocks each query block attends to (Zaheer et al. 2020, Fig. 1).

  Returns int [num_q_blocks, slots]: sorted, distinct key block indices per
  query block, padded with -1. Query block a sees key block c if c is within
  the window (|a - c| <= num_window_blocks // 2), c is global (c <
  num_global_blocks), a is global (a < num_global_blocks: it sees everything),
  or c is one of `num_random_blocks` blocks drawn for a from the rest, by a
  NumPy generator seeded with `seed`. Causal keeps only c <= a (tokens are
  then masked j <= i).
  """
  half = num_window_blocks // 2
  rng = np.random.default_rng(seed)
  rows = []
  for a in range(num_q_blocks):
    if a < num_global_blocks:
      chosen = set(range(num_k_blocks))
    else:
      chosen = {c for c in range(a - half, a + half + 1) if 0 <= c < num_k_blocks}
      chosen |= set(range(min(num_global_blocks, num_k_blocks)))
      rest = [c for c in range(num_k_blocks) if c not in chosen and (c <= a or not causal)]
      if rest and num_random_blocks:
        chosen |= set(rng.choice(rest, size=min(num_random_blocks, len(rest)), replace=False).tolist())
    if causal:
      chosen = {c for c in chosen if c <= a}
    rows.append(sorted(chosen))
  width = max(1, max(len(r) for r in rows))
  table = np.full((num_q_blocks, width), -1, np.int32)
  for a, r in enumerate(rows):
    table[a, :len(r)] = r
  return table


def check_bigbird_options(block_size, num_window_blocks, num_global_blocks, num_random_blocks, seed):
  common.positive_int("bigbird", "block_size", block_size)
  common.positive_int("bigbird", "num_window_blocks", num_window_blocks)
  if num_window_blocks % 2 == 0:
    raise ValueError(
        f"bigbird: `num_window_blocks` must be odd (the block itself and as many on "
        f"each side), got {num_window_blocks}")
  common.non_negative_int("bigbird", "num_global_blocks", num_global_blocks)
  common.non_negative_int("bigbird", "num_random_blocks", num_random_blocks)
  common.non_negative_int("bigbird", "seed", seed)


def bigbird_mask(q_len, k_len, *, block_size=64, num_window_blocks=3, num_global_blocks=2,
                 num_random_blocks=3, seed=0, causal=False):
  """[q_len, k_len] bool mask of `bigbird` with the same options."""
  check_bigbird_options(block_size, num_window_blocks, num_global_blocks, num_random_blocks, seed)
  nq, nk = -(-q_len // block_size), -(-k_len // block_size)
  table = bigbird_key_blocks(nq, nk, num_window_blocks=num_window_blocks,
                             num_global_blocks=num_global_blocks,
                             num_random_blocks=num_random_blocks, seed=seed, causal=causal)
  blocks = np.zeros((nq, nk + 1), bool)  # the last column absorbs the -1 padding
  np.put_along_axis(blocks, np.where(table < 0, nk, table), True, axis=1)
  mask = np.repeat(np.repeat(blocks[:, :nk], block_size, 0), block_size, 1)[:q_len, :k_len]
  return mask & full_mask(q_len, k_len, causal=causal)
