"""Multi-head attention as a Flax module over any registered attention variant.

The projections follow `flax.linen.MultiHeadDotProductAttention` (Vaswani et
al. 2017, Sec. 3.2.2), with the same parameter tree (`query`, `key`, `value`,
`out` DenseGeneral), so weights move between the two; the attention itself is
`attention.get(name)`, any variant by name. Keys and values may have fewer
heads than queries (grouped-query attention, Ainslie et al. 2023; one kv head
is multi-query attention, Shazeer 2019). RoPE rotates queries and keys here;
ALiBi is a bias the variant applies from per-head slopes.

`apply(..., mutable=["intermediates"])` also returns each layer's attention
weights [B, H, Lq, Lk] under ("intermediates", ..., "attention_weights"), for
the exact variants (`attention.probabilities`).

Attention dropout: our variants never form the attention probabilities (most
of them cannot: blockwise, sparse and linear attention never hold the
Lq x Lk matrix), so dropping probabilities, as in Vaswani et al., is not
available. `dropout_rate` drops the attention output [B, L, H, D] before the
out projection instead.
"""

from typing import Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from attention_research import attention as attention_lib
from attention_research.models import positional

Initializer = Callable


class MultiHeadAttention(nn.Module):
  """Self-attention: x [B, L, d] -> [B, L, out_features or d].

  Attributes:
    num_heads: query heads H.
    num_kv_heads: key/value heads (None: H); must divide H.
    head_dim: per-head width D (None: d // H).
    attention: registry name of the variant.
    attention_options: the variant's options as a tuple of (key, value)
      pairs (a tuple, not a dict, so the module stays hashable).
    dropout_rate: dropout on the attention output (see the module docstring).
    causal: query i sees keys j <= i.
    use_rope, rope_base: rotate queries and keys (Su et al. 2021).
    use_alibi: pass ALiBi slopes for the H query heads to the variant.
    context_parallel: None, or (mesh, strategy): the attention runs split
      over the mesh's "context" axis (`attention.context_parallel`).
    per_device: None, or a mesh: the attention runs on each device's share
      of the batch and heads under shard_map (`attention.per_device`), so a
      vendor kernel serves it over the mesh.
    kernel_init: init of the query/key/value kernels (and `out`, unless
      out_kernel_init is given).
    out_kernel_init: init of the out projection (GPT-2 scales it by depth).
    dtype: compute dtype; parameters stay float32.
    out_features: output width (None: the input's).
  """
  num_heads: int
  num_kv_heads: Optional[int] = None
  head_dim: Optional[int] = None
  attention: str = "dense"
  attention_options: tuple = ()
  dropout_rate: float = 0.0
  causal: bool = False
  use_rope: bool = False
  rope_base: float = 10000.0
  use_alibi: bool = False
  context_parallel: Optional[tuple] = None
  per_device: Optional[object] = None
  kernel_init: Initializer = nn.linear.default_kernel_init
  out_kernel_init: Optional[Initializer] = None
  dtype: jnp.dtype = jnp.float32
  out_features: Optional[int] = None

  @nn.compact
  def __call__(self, x, kv_mask=None, *, deterministic=True):
    features = x.shape[-1]
    head_dim = self.head_dim or features // self.num_heads
    kv_heads = self.num_kv_heads or self.num_heads

    def project(name, heads):
      return nn.DenseGeneral((heads, head_dim), axis=-1, kernel_init=self.kernel_init,
                             dtype=self.dtype, name=name)(x)
    query = project("query", self.num_heads)
    key = project("key", kv_heads)
    value = project("value", kv_heads)
    if self.use_rope:
      query = positional.rope(query, base=self.rope_base)
      key = positional.rope(key, base=self.rope_base)

    options = dict(self.attention_options)
    if self.use_alibi:
      options["alibi_slopes"] = jnp.asarray(positional.alibi_slopes(self.num_heads))
    if (self.is_mutable_collection("intermediates")
        and attention_lib.variant(self.attention).exact):
      # The weights a reader inspects (experiments/inspect_attention.py), formed only
      # when asked for (apply(..., mutable=["intermediates"])); the output below is
      # computed as always, so inspecting a model does not change it.
      self.sow("intermediates", "attention_weights", attention_lib.probabilities(
          self.attention, query, key, causal=self.causal, kv_mask=kv_mask, **options))
    if self.per_device is not None:
      attend = attention_lib.per_device(self.attention, self.per_device)
    elif self.context_parallel is None:
      attend = attention_lib.get(self.attention)
    else:
      attend = attention_lib.context_parallel(self.attention, *self.context_parallel)
    out = attend(query, key, value, causal=self.causal, kv_mask=kv_mask, **options)
    out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
    return nn.DenseGeneral(self.out_features or features, axis=(-2, -1),
                           kernel_init=self.out_kernel_init or self.kernel_init,
                           dtype=self.dtype, name="out")(out)
