"""Query rows with no key to attend to, for the kernels that do not give them zeros.

Our contract returns zeros for such a row (docs/design.md). cuDNN and the
Pallas GPU kernel mask with a large finite negative logit, so a row whose keys
are all masked averages the masked values instead; the kernel's caller zeroes
those rows, which also zeroes the gradient flowing into them (so the kernel's
backward pass sees a zero output gradient there). O(B x L): a cumulative count
of real keys, never a mask over [Lq, Lk].
"""

import jax.numpy as jnp


def has_key(kv_mask, q_len, *, causal, window=None):
  """bool [B, q_len]: query row i sees a real key among those its pattern
  allows: all keys, j <= i (causal, top-left aligned), and with `window`
  |i - j| <= window (causal: 0 <= i - j <= window)."""
  k_len = kv_mask.shape[1]
  # before[:, j] = real keys among the first j.
  before = jnp.pad(jnp.cumsum(kv_mask, axis=1, dtype=jnp.int32), ((0, 0), (1, 0)))
  i = jnp.arange(q_len)
  last = i if causal else (i + window if window is not None else jnp.full_like(i, k_len - 1))
  first = jnp.maximum(i - window, 0) if window is not None else jnp.zeros_like(i)
  last = jnp.minimum(last, k_len - 1)
  first = jnp.minimum(first, last + 1)  # an empty range counts no key
  return (before[:, last + 1] - before[:, first]) > 0


def zero_rows_without_keys(out, kv_mask, *, causal, window=None):
  """out [B, Lq, H, D] with the rows that see no real key set to zero."""
  keep = has_key(kv_mask, out.shape[1], causal=causal, window=window)
  return jnp.where(keep[:, :, None, None], out, jnp.zeros((), out.dtype))
