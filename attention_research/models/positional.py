"""Positional information for the models: the five choices of `config.pos`.

- "sinusoidal": a fixed table added to the embeddings (Vaswani et al. 2017,
  Sec. 3.5): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same).
- "learned": a trained table of `max_position` rows added to the embeddings
  (BERT, GPT-2).
- "rope": rotary embeddings (Su et al. 2021, "RoFormer"), a rotation of query
  and key inside attention, so that q.k depends on positions only through i - j.
- "alibi": a per-head linear bias -slope_h * |i - j| on the attention logits
  (Press et al. 2022, "Train Short, Test Long"); the attention variants apply
  it, this file only hands out the slopes.
- "none": nothing, the control for "attention without positions cannot see
  order".
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from attention_research import attention


def sinusoidal(length, dim, *, base=10000.0):
  """The Vaswani et al. table as float32 [length, dim].

  Even columns 2i hold sin(p / base^(2i/dim)), odd columns 2i+1 the cosine of
  the same angle; an odd `dim` keeps the last sine column only. Computed with
  jax.numpy in float32, inside the computation rather than as a baked-in
  constant (a 16K x 1024 table would be 64 MB of constant); the angle's
  rounding error grows with p, about 1e-3 at p = 16K.
  """
  positions = jnp.arange(length, dtype=jnp.float32)[:, None]
  inv_freq = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)   # [ceil(dim / 2)]
  angles = positions * inv_freq
  table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(length, -1)
  return table[:, :dim]


class LearnedPositions(nn.Module):
  """A trained [max_position, features] table; returns its first `length` rows."""
  max_position: int
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, length):
    if length > self.max_position:
      raise ValueError(f"sequence length {length} exceeds the learned position table "
                       f"(max_position={self.max_position})")
    table = self.param("table", nn.initializers.normal(0.02), (self.max_position, self.features),
                       jnp.float32)
    return table[:length].astype(self.dtype)


def rope(x, *, base=10000.0, positions=None):
  """Rotary position embedding of x [B, L, H, D] (D even), in x's dtype.

  Pairs (x[2i], x[2i+1]) are rotated by angle p * base^(-2i/D) at position p
  (Su et al. 2021, eq. 34: interleaved pairs, as in the paper, not the
  half-split layout of GPT-NeoX). The angles are computed in float32.

  Args:
    x: [B, L, H, D].
    base: the frequency base (10000 in the paper).
    positions: int [L] or [B, L]; default 0 .. L-1.
  """
  length, dim = x.shape[1], x.shape[-1]
  if dim % 2:
    raise ValueError(f"rope: head_dim must be even to rotate pairs, got {dim}")
  if positions is None:
    positions = jnp.arange(length)
  positions = jnp.asarray(positions, jnp.float32)
  inv_freq = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)          # [D/2]
  angles = positions[..., None] * inv_freq                                        # [(B,) L, D/2]
  # [B or 1, L, 1, D/2]: broadcast over batch (shared positions) and heads
  angles = angles[..., None, :] if angles.ndim == 3 else angles[None, :, None, :]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], dim // 2, 2)
  even, odd = pairs[..., 0], pairs[..., 1]
  rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
  return rotated.reshape(x.shape).astype(x.dtype)


def alibi_slopes(num_heads):
  """ALiBi's per-head slopes, NumPy float32 [num_heads] (Press et al. 2022):
  the attention package's definition, so models and variants agree."""
  return attention.alibi_slopes(num_heads)


def takes_alibi(variant_name):
  """Whether an attention variant accepts the ALiBi bias."""
  return "alibi_slopes" in attention.variant(variant_name).options
