"""The Transformer (Vaswani et al. 2017) and the three models built on it.

- `Block`: attention + MLP, each a residual branch, with LayerNorm before the
  branch ("pre", Xiong et al. 2020) or after the residual sum ("post", the
  original).
- `Encoder`: token embedding, positions, blocks, and a final LayerNorm for
  pre-LN. Causal or not; it is the decoder's body too.
- `Classifier`: encoder + CLS or mean pooling + a Dense head (LRA's text and
  ListOps tasks, Tay et al. 2021).
- `DualEncoder`: one shared encoder for two sequences and LRA's retrieval
  head on [u, v, u*v, u-v].
- `Decoder`: a causal language model with optional tied embeddings.

All of them take a resolved `Settings` (`models.resolve(config)` builds it,
in `config.py`), so one hashable object carries every
architecture choice. Embedding conventions: the learned tables (tokens and
learned positions) start at normal(0.02) and their sum is multiplied by
sqrt(d_model), as Vaswani et al. Sec. 3.4 do for the token embedding, so it is
comparable in scale to the sinusoidal table (entries in [-1, 1]).
"""

import dataclasses
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from attention_research import attention as attention_lib
from attention_research import sharding
from attention_research.models import attention_layer
from attention_research.models import positional

ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu}
# Logical axes of the residual stream and the MLP's hidden units (sharding.RULES).
ACTIVATIONS_AXES = ("activation_batch", "activation_length", "activation_embed")
MLP_AXES = ("activation_batch", "activation_length", "activation_mlp")
KERNEL_INITS = {
    "xavier_uniform": nn.initializers.xavier_uniform,
    "he_normal": nn.initializers.he_normal,
    "lecun_normal": nn.initializers.lecun_normal,
    "small": lambda: nn.initializers.normal(0.02),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
EMBED_INIT = nn.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every architecture choice, resolved (no None sizes) and hashable.

  `models.resolve(config)` makes one from a config, with the defaults of
  `models.DEFAULTS`; there are none here, so they live in one place.
  """
  model: str                          # a name in MODELS
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  attention: str
  attention_options: tuple            # ((key, value), ...), sorted
  activation: str
  norm: str
  dropout: float
  attention_dropout: float
  pos: str
  max_position: int                   # rows of the learned position table
  rope_base: float
  init: str
  pooling: str
  tie_embeddings: bool
  compute_dtype: str
  # The trainer's mesh: the main activations are constrained to it under
  # sharding.RULES (None: no constraints, as on one device).
  mesh: Optional[object] = None
  # A strategy: attention split over the mesh's "context" axis
  # (attention.context_parallel); None: on each device's whole sequence.
  context_parallel: Optional[str] = None

  @property
  def dtype(self):
    return DTYPES[self.compute_dtype]


def kernel_inits(s: Settings):
  """(init of every kernel, init of the residual output projections).

  "small" is GPT-2's: normal(0.02), with the projections that write into the
  residual stream (attention out, MLP second layer) scaled by 1/sqrt(2 *
  num_layers), so the residual variance does not grow with depth (Radford et
  al. 2019, Sec. 2.3). The other names use one init everywhere.
  """
  init = KERNEL_INITS[s.init]()
  if s.init != "small":
    return init, init
  return init, nn.initializers.normal(0.02 / np.sqrt(2 * s.num_layers))


class Block(nn.Module):
  """One Transformer layer: x [B, L, d] -> [B, L, d], the residual stream in float32.

  Under bfloat16 compute only the branches (attention, MLP) run in bfloat16;
  the residual sums stay float32, so small updates are not rounded away.
  """
  settings: Settings
  causal: bool = False

  @nn.compact
  def __call__(self, x, kv_mask=None, *, deterministic=True):
    s = self.settings
    init, residual_init = kernel_inits(s)
    x = sharding.constrain(x.astype(jnp.float32), ACTIVATIONS_AXES, s.mesh)
    drop = lambda y: nn.Dropout(s.dropout)(y, deterministic=deterministic).astype(jnp.float32)
    # Pre-LN norms feed a branch (compute dtype); post-LN norms are the stream.
    norm = lambda name: nn.LayerNorm(dtype=s.dtype if s.norm == "pre" else jnp.float32,
                                     name=name)

    def attention(y):
      return attention_layer.MultiHeadAttention(
          num_heads=s.num_heads, num_kv_heads=s.num_kv_heads, head_dim=s.head_dim,
          attention=s.attention, attention_options=s.attention_options,
          dropout_rate=s.attention_dropout, causal=self.causal, use_rope=s.pos == "rope",
          rope_base=s.rope_base, use_alibi=s.pos == "alibi",
          context_parallel=s.context_parallel and (s.mesh, s.context_parallel),
          per_device=s.mesh if attention_lib.runs_per_device(
              s.attention, s.mesh, s.attention_options) else None, kernel_init=init,
          out_kernel_init=residual_init, dtype=s.dtype, name="attention",
      )(y, kv_mask, deterministic=deterministic)

    def mlp(y):
      y = nn.Dense(s.mlp_dim, kernel_init=init, dtype=s.dtype, name="mlp_in")(y)
      y = sharding.constrain(y, MLP_AXES, s.mesh)
      y = ACTIVATIONS[s.activation](y)
      return nn.Dense(s.d_model, kernel_init=residual_init, dtype=s.dtype, name="mlp_out")(y)

    if s.norm == "pre":
      x = x + drop(attention(norm("attention_norm")(x)))
      return x + drop(mlp(norm("mlp_norm")(x)))
    x = norm("attention_norm")(x + drop(attention(x)))
    return norm("mlp_norm")(x + drop(mlp(x)))


class Encoder(nn.Module):
  """tokens int [B, L] -> hidden [B, L, d] in the compute dtype.

  Attributes:
    settings: the architecture.
    num_embeddings: rows of the token table (the vocabulary, plus one for a
      CLS token where the model prepends one).
    causal: decoder-style attention.
  """
  settings: Settings
  num_embeddings: int
  causal: bool = False

  def setup(self):
    s = self.settings
    self.embed = nn.Embed(self.num_embeddings, s.d_model, embedding_init=EMBED_INIT,
                          dtype=s.dtype)
    if s.pos == "learned":
      self.positions = positional.LearnedPositions(s.max_position, s.d_model, dtype=s.dtype)
    self.blocks = [Block(s, causal=self.causal, name=f"block_{i}") for i in range(s.num_layers)]
    if s.norm == "pre":
      self.final_norm = nn.LayerNorm(dtype=s.dtype)
    self.dropout = nn.Dropout(s.dropout)

  def __call__(self, tokens, input_mask=None, *, deterministic=True):
    s = self.settings
    x = self.embed(tokens).astype(jnp.float32)  # the residual stream stays float32
    if s.pos == "learned":
      x = x + self.positions(tokens.shape[1])[None].astype(jnp.float32)
    x = x * np.sqrt(s.d_model).astype(np.float32)
    if s.pos == "sinusoidal":
      x = x + positional.sinusoidal(tokens.shape[1], s.d_model).astype(jnp.float32)[None]
    x = self.dropout(x, deterministic=deterministic)
    for block in self.blocks:
      x = block(x, input_mask, deterministic=deterministic)
    return self.final_norm(x) if s.norm == "pre" else x.astype(s.dtype)

  def attend(self, hidden):
    """Logits against the token table (tied embeddings): [..., d] -> [..., rows]."""
    return self.embed.attend(hidden)


def _pool(settings, hidden, mask):
  """[B, L', d] -> [B, d] float32: the CLS row, or the mean over real tokens."""
  hidden = hidden.astype(jnp.float32)
  if settings.pooling == "cls":
    return hidden[:, 0]
  weights = mask.astype(jnp.float32)[..., None]
  return (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


def _encode_and_pool(encoder, inputs, input_mask, deterministic):
  """[B, L] tokens -> pooled [B, d] float32; with CLS pooling, the CLS token (the
  table's last row) is prepended first."""
  s = encoder.settings
  if s.pooling == "cls":
    cls = jnp.full((inputs.shape[0], 1), encoder.num_embeddings - 1, inputs.dtype)
    inputs = jnp.concatenate([cls, inputs], axis=1)
    input_mask = jnp.concatenate([jnp.ones_like(input_mask[:, :1]), input_mask], axis=1)
  hidden = encoder(inputs, input_mask, deterministic=deterministic)
  return _pool(s, hidden, input_mask)


def _token_rows(settings, vocab_size):
  return vocab_size + (settings.pooling == "cls")


class Classifier(nn.Module):
  """inputs int [B, L], input_mask bool [B, L] -> logits float32 [B, num_classes]."""
  settings: Settings
  vocab_size: int
  num_classes: Optional[int] = None

  @nn.compact
  def __call__(self, inputs, input_mask, *, train=False):
    s = self.settings
    encoder = Encoder(s, _token_rows(s, self.vocab_size), name="encoder")
    pooled = _encode_and_pool(encoder, inputs, input_mask, not train)
    head = nn.Dense(self.num_classes, kernel_init=kernel_inits(s)[0], dtype=s.dtype, name="head")
    return head(pooled).astype(jnp.float32)


class DualEncoder(nn.Module):
  """inputs int [B, 2, L], input_mask bool [B, 2, L] -> logits float32 [B, num_classes].

  Both sequences go through one encoder; the head sees [u, v, u*v, u-v] as in
  the LRA retrieval task (Tay et al. 2021).
  """
  settings: Settings
  vocab_size: int
  num_classes: Optional[int] = None

  @nn.compact
  def __call__(self, inputs, input_mask, *, train=False):
    s = self.settings
    if inputs.ndim != 3 or inputs.shape[1] != 2:
      raise ValueError(f"dual_encoder: `inputs` must be [batch, 2, length], got {inputs.shape}")
    b, two, length = inputs.shape
    encoder = Encoder(s, _token_rows(s, self.vocab_size), name="encoder")
    pooled = _encode_and_pool(encoder, inputs.reshape(b * two, length),
                              input_mask.reshape(b * two, length), not train)
    pairs = pooled.reshape(b, two, -1)
    u, v = pairs[:, 0], pairs[:, 1]
    init = kernel_inits(s)[0]
    x = jnp.concatenate([u, v, u * v, u - v], axis=-1)
    x = ACTIVATIONS[s.activation](nn.Dense(s.mlp_dim, kernel_init=init, dtype=s.dtype,
                                           name="head_hidden")(x))
    x = nn.Dense(self.num_classes, kernel_init=init, dtype=s.dtype, name="head")(x)
    return x.astype(jnp.float32)


class Decoder(nn.Module):
  """inputs int [B, L], input_mask bool [B, L] -> next-token logits float32 [B, L, vocab]."""
  settings: Settings
  vocab_size: int
  num_classes: Optional[int] = None   # unused; one constructor signature for all models

  @nn.compact
  def __call__(self, inputs, input_mask, *, train=False):
    s = self.settings
    encoder = Encoder(s, self.vocab_size, causal=True, name="encoder")
    hidden = encoder(inputs, input_mask, deterministic=not train)
    if s.tie_embeddings:
      return encoder.attend(hidden).astype(jnp.float32)
    logits = nn.Dense(self.vocab_size, kernel_init=kernel_inits(s)[0], dtype=s.dtype,
                      name="logits")(hidden)
    return logits.astype(jnp.float32)


MODELS = {"classifier": Classifier, "dual_encoder": DualEncoder, "decoder": Decoder}
