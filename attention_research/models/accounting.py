"""What a model costs: parameter counts and analytic forward FLOPs per token.

The attention op's FLOPs come from the variant's registered cost
(`attention.variant(name).flops_per_query`), so a newly registered variant is
counted without any change here.
"""

import math

import jax
import numpy as np

from attention_research import attention
from attention_research.models import config as config_lib
from attention_research.models import transformer


def num_params(params) -> int:
  """Number of scalars in a parameter pytree (arrays or jax.ShapeDtypeStructs)."""
  return int(sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))


def num_block_params(params) -> int:
  """Scalars in the Transformer blocks only: Kaplan et al. 2020's non-embedding N.

  Excludes token and position embeddings, the output layer or classifier
  head and the final norm, whose size depends on the vocabulary, not on the
  model's shape (Kaplan et al. count N = 12 n_layer d_model^2 this way).
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return int(sum(math.prod(np.shape(x)) for path, x in flat
                 if any(str(getattr(k, "key", "")).startswith("block_") for k in path)))


def attention_flops_per_query(s: transformer.Settings, seq_len, *, causal) -> float:
  """Forward FLOPs of the attention op itself for one query token (the
  variant's registered cost, with the config's options)."""
  return attention.variant(s.attention).flops_per_query(
      seq_len, heads=s.num_heads, kv_heads=s.num_kv_heads, head_dim=s.head_dim, causal=causal,
      options=dict(s.attention_options))


def flops_per_token(config_or_settings, seq_len, *, vocab_size, num_classes=None) -> float:
  """Analytic forward FLOPs per input token (2 x multiply-accumulates).

  Counts every matmul: the q/k/v/out projections, the MLP, the attention op
  (`attention_flops_per_query`) and the head (a classifier's head, once per
  sequence, is spread over its tokens; a dual encoder's input is 2 x seq_len
  tokens). A CLS token, where pooling prepends one, is computed like any other
  token but is not an input token. Embedding lookups, LayerNorm, activations
  and softmax are elementwise and left out. Training costs about 3x this.
  """
  s = config_lib.as_settings(config_or_settings)
  vocab_size, num_classes = config_lib.check_sizes(s.model, vocab_size, num_classes)
  causal = s.model == "decoder"
  seen = config_lib.encoded_length(s.model, s.pooling, seq_len)
  d, qkv = s.d_model, s.head_dim * (s.num_heads + 2 * s.num_kv_heads)
  per_token = (2 * d * qkv + 2 * s.num_heads * s.head_dim * d + 4 * d * s.mlp_dim
               + attention_flops_per_query(s, seen, causal=causal))
  body = s.num_layers * per_token * seen                      # one sequence
  if s.model == "decoder":
    return float(body / seq_len + 2 * d * vocab_size)
  if s.model == "classifier":
    return float((body + 2 * d * num_classes) / seq_len)
  head = 2 * (4 * d * s.mlp_dim + s.mlp_dim * num_classes)
  return float((2 * body + head) / (2 * seq_len))
