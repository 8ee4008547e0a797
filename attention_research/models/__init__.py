"""Models from a config: validation, construction, parameter and FLOP counts.

    from attention_research import models
    models.validate_config(config)            # ValueError before anything compiles
    model = models.build(config, vocab_size=256, num_classes=2)
    params = model.init(key, inputs, input_mask)["params"]
    logits = model.apply({"params": params}, inputs, input_mask, train=True,
                         rngs={"dropout": key})

The config is flat (an ml_collections.ConfigDict or a dict; the trainer passes
its whole config, so other fields are left alone). `REQUIRED` fields must be
present; every other field this package reads has its default in `DEFAULTS`,
the one place they live. Models are found by name in `transformer.MODELS`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from attention_research import attention
from attention_research.models import positional
from attention_research.models import transformer

REQUIRED = ("model", "num_layers", "d_model", "num_heads", "mlp_dim", "max_len")
DEFAULTS = {
    "attention": "dense",
    "attention_options": {},
    "num_kv_heads": None,        # None: num_heads (multi-head attention)
    "head_dim": None,            # None: d_model // num_heads
    "activation": "gelu",
    "norm": "pre",
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "pos": "sinusoidal",
    "max_position": None,        # None: the length the encoder sees (max_len, +1 with CLS)
    "rope_base": 10000.0,
    "init": "xavier_uniform",
    "pooling": "mean",
    "tie_embeddings": False,
    "compute_dtype": "float32",
}
POSITIONS = ("none", "sinusoidal", "learned", "rope", "alibi")
CHOICES = {
    "model": tuple(transformer.MODELS),
    "pos": POSITIONS,
    "init": tuple(transformer.KERNEL_INITS),
    "activation": tuple(transformer.ACTIVATIONS),
    "norm": ("pre", "post"),
    "pooling": ("cls", "mean"),
    "compute_dtype": tuple(transformer.DTYPES),
}
_OPTION_TYPES = (bool, int, float, str, type(None), np.integer, np.floating)

Settings = transformer.Settings
MODELS = transformer.MODELS


def _get(config, field):
  if field in REQUIRED:
    if field not in config:
      raise ValueError(f"config is missing the required field `{field}` (required: "
                       f"{list(REQUIRED)})")
    return config[field]
  return config.get(field, DEFAULTS[field])


def _positive_int(field, value):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"config.{field} must be a positive integer, got {value!r}")
  return int(value)


def _rate(field, value):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
    raise ValueError(f"config.{field} must be a rate in [0, 1), got {value!r}")
  return float(value)


def _attention_options(config, name):
  """config.attention_options as sorted (key, value) pairs, checked against the variant."""
  options = _get(config, "attention_options") or {}
  if hasattr(options, "to_dict"):
    options = options.to_dict()
  if not isinstance(options, dict):
    raise ValueError(f"config.attention_options must be a dict, got {type(options).__name__}")
  takes = sorted(attention.variant(name).options)
  unknown = sorted(set(options) - set(takes))
  if unknown:
    raise ValueError(f"config.attention_options: attention {name!r} does not take {unknown}; "
                     f"it takes {takes}")
  if "alibi_slopes" in options:
    raise ValueError("config.attention_options: set config.pos='alibi' instead of passing "
                     "`alibi_slopes`")
  for key, value in options.items():
    if not isinstance(value, _OPTION_TYPES):
      raise ValueError(f"config.attention_options.{key} must be a number, string, bool or None "
                       f"(models keep options hashable), got {type(value).__name__}")
  return tuple(sorted(options.items()))


def settings(config) -> Settings:
  """Validates `config` and resolves it into the models' `Settings`."""
  model = _get(config, "model")
  for field, allowed in CHOICES.items():
    if _get(config, field) not in allowed:
      raise ValueError(f"config.{field} must be one of {list(allowed)}, got "
                       f"{_get(config, field)!r}")
  name = _get(config, "attention")
  if name not in attention.names():
    raise ValueError(f"config.attention must be one of the registered variants "
                     f"{attention.names()}, got {name!r}")
  options = _attention_options(config, name)
  sizes = {f: _positive_int(f, _get(config, f)) for f in REQUIRED if f != "model"}
  kv_heads, head_dim = _head_sizes(config, sizes["d_model"], sizes["num_heads"])
  # The encoder sees one more token than the data has when CLS pooling prepends one.
  length = sizes["max_len"] + (_get(config, "pooling") == "cls" and model != "decoder")
  max_position = _check_positions(config, name, head_dim, length, sizes["max_len"])
  tie = _get(config, "tie_embeddings")
  if not isinstance(tie, bool) or (tie and model != "decoder"):
    raise ValueError(f"config.tie_embeddings must be a bool, and True only for model='decoder'; "
                     f"got {tie!r} with model={model!r}")

  s = Settings(
      num_layers=sizes["num_layers"], d_model=sizes["d_model"], num_heads=sizes["num_heads"],
      num_kv_heads=kv_heads, head_dim=head_dim, mlp_dim=sizes["mlp_dim"], attention=name,
      attention_options=options, activation=_get(config, "activation"),
      norm=_get(config, "norm"), dropout=_rate("dropout", _get(config, "dropout")),
      attention_dropout=_rate("attention_dropout", _get(config, "attention_dropout")),
      pos=_get(config, "pos"), max_position=max_position,
      rope_base=float(_get(config, "rope_base")), init=_get(config, "init"),
      pooling=_get(config, "pooling"), tie_embeddings=tie,
      compute_dtype=_get(config, "compute_dtype"))
  _check_options_trace(s, length, causal=model == "decoder")
  return s


def _head_sizes(config, d_model, heads):
  """(num_kv_heads, head_dim), with their None defaults resolved."""
  kv_heads = _get(config, "num_kv_heads")
  kv_heads = heads if kv_heads is None else _positive_int("num_kv_heads", kv_heads)
  if heads % kv_heads:
    raise ValueError(f"config.num_heads ({heads}) must be a multiple of config.num_kv_heads "
                     f"({kv_heads})")
  head_dim = _get(config, "head_dim")
  if head_dim is None:
    if d_model % heads:
      raise ValueError(f"config.d_model ({d_model}) must be divisible by config.num_heads "
                       f"({heads}) when config.head_dim is None")
    head_dim = d_model // heads
  return kv_heads, _positive_int("head_dim", head_dim)


def _check_positions(config, name, head_dim, length, max_len):
  """Checks what config.pos needs; returns the learned table's size."""
  pos = _get(config, "pos")
  max_position = _get(config, "max_position")
  max_position = length if max_position is None else _positive_int("max_position", max_position)
  if pos == "learned" and length > max_position:
    cls = " + 1 CLS token" if length > max_len else ""
    raise ValueError(f"config.max_position ({max_position}) is smaller than the sequence the "
                     f"encoder sees (config.max_len={max_len}{cls}) with pos='learned'")
  if pos == "rope" and head_dim % 2:
    raise ValueError(f"config.head_dim ({head_dim}) must be even for pos='rope'")
  if pos == "alibi" and not positional.takes_alibi(name):
    can = [n for n in attention.names() if positional.takes_alibi(n)]
    raise ValueError(f"config.pos='alibi' needs an attention variant that takes a logit bias; "
                     f"config.attention={name!r} does not; these do: {can}")
  rope_base = _get(config, "rope_base")
  if isinstance(rope_base, bool) or not isinstance(rope_base, (int, float)) or rope_base <= 0:
    raise ValueError(f"config.rope_base must be a positive number, got {rope_base!r}")
  return max_position


def _check_options_trace(s, length, *, causal):
  """Traces (never compiles) the variant once on abstract inputs, so a bad
  option value (a negative window, an unknown feature map) fails here."""
  q = jax.ShapeDtypeStruct((1, length, s.num_heads, s.head_dim), jnp.float32)
  kv = jax.ShapeDtypeStruct((1, length, s.num_kv_heads, s.head_dim), jnp.float32)
  options = dict(s.attention_options)
  if s.pos == "alibi":
    options["alibi_slopes"] = positional.alibi_slopes(s.num_heads)
  fn = attention.get(s.attention)
  try:
    jax.eval_shape(lambda q, k, v: fn(q, k, v, causal=causal, **options), q, kv, kv)
  except ValueError as e:
    raise ValueError(f"config.attention_options for {s.attention!r}: {e}") from e


def validate_config(config):
  """Raises ValueError naming the field and its allowed values for a bad config."""
  settings(config)


def build(config, *, vocab_size, num_classes=None):
  """The flax module for `config.model` (validated first).

  Args:
    config: the flat config (see `REQUIRED` and `DEFAULTS`).
    vocab_size: token ids are in [0, vocab_size).
    num_classes: output classes; required for "classifier" and "dual_encoder".
  """
  s = settings(config)
  model = _get(config, "model")
  vocab_size, num_classes = _sizes(model, vocab_size, num_classes)
  return MODELS[model](settings=s, vocab_size=vocab_size, num_classes=num_classes)


def _sizes(model, vocab_size, num_classes):
  """Checks build's size arguments; num_classes is None for the decoder."""
  def positive(value):
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value > 0
  if not positive(vocab_size):
    raise ValueError(f"`vocab_size` must be a positive integer, got {vocab_size!r}")
  if model == "decoder":
    return int(vocab_size), None
  if not positive(num_classes):
    raise ValueError(f"model {model!r} needs `num_classes`, a positive integer; got "
                     f"{num_classes!r}")
  return int(vocab_size), int(num_classes)


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


def attention_flops_per_query(s: Settings, seq_len, *, causal):
  """Forward FLOPs of the attention op itself for one query token, per variant.

  The cost table (2 FLOPs per multiply-accumulate; H heads, Hkv kv heads, D
  head_dim): an exact variant does q.k and p.v for each key a query sees,
  4 H D per key:
    dense, blockwise  L keys; (L + 1) / 2 on average when causal
    local             2 window + 1; window + 1 when causal
    strided           2 stride - 1 + L / stride; stride + L / (2 stride) causal
    bigbird           block_size x (window + global + random blocks); causal
                      keeps (window + 1) / 2 of the window blocks
  (at most L). It counts the keys a query attends to, not the padding inside
  gathered blocks, and not the elementwise softmax.
  Linear variants pay per token instead, with F features per head:
    linear            F = D;  performer  F = num_features, plus the feature
                      projection 2 D F (H + Hkv)
    both              state and numerator 2 F D (H + Hkv), denominator 2 F H;
                      causal adds the in-chunk quadratic form 2 H c (F + D)
                      with c = min(chunk_size, L).
  """
  o = {**attention.variant(s.attention).options, **dict(s.attention_options)}
  h, hkv, d, length = s.num_heads, s.num_kv_heads, s.head_dim, seq_len
  name = s.attention
  if name in ("dense", "blockwise"):
    keys = (length + 1) / 2 if causal else length
  elif name == "local":
    keys = o["window"] + 1 if causal else 2 * o["window"] + 1
  elif name == "strided":
    st = o["stride"]
    keys = st + length / (2 * st) if causal else 2 * st - 1 + length / st
  elif name == "bigbird":
    window = (o["num_window_blocks"] + 1) / 2 if causal else o["num_window_blocks"]
    keys = o["block_size"] * (window + o["num_global_blocks"] + o["num_random_blocks"])
  elif name in ("linear", "performer"):
    f = d if name == "linear" else o["num_features"]
    flops = 2 * f * d * (h + hkv) + 2 * f * h
    if causal:
      flops += 2 * h * min(o["chunk_size"], length) * (f + d)
    if name == "performer":
      flops += 2 * d * f * (h + hkv)
    return float(flops)
  else:
    raise ValueError(f"attention_flops_per_query: no cost for attention variant {name!r}; add "
                     f"it to the table in attention_research/models/__init__.py")
  return float(4 * h * d * min(keys, length))


def flops_per_token(config, seq_len, *, vocab_size, num_classes=None) -> float:
  """Analytic forward FLOPs per input token (2 x multiply-accumulates).

  Counts every matmul: the q/k/v/out projections, the MLP, the attention op
  (`attention_flops_per_query`) and the head (a classifier's head, once per
  sequence, is spread over its tokens; a dual encoder's input is 2 x seq_len
  tokens). A CLS token, where pooling prepends one, is computed like any other
  token but is not an input token. Embedding lookups, LayerNorm, activations
  and softmax are elementwise and left out. Training costs about 3x this.
  """
  s = settings(config)
  model = _get(config, "model")
  vocab_size, num_classes = _sizes(model, vocab_size, num_classes)
  seen = seq_len + (s.pooling == "cls" and model != "decoder")
  d, qkv = s.d_model, s.head_dim * (s.num_heads + 2 * s.num_kv_heads)
  per_token = (2 * d * qkv + 2 * s.num_heads * s.head_dim * d + 4 * d * s.mlp_dim
               + attention_flops_per_query(s, seen, causal=model == "decoder"))
  body = s.num_layers * per_token * seen                      # one sequence
  if model == "decoder":
    return float(body / seq_len + 2 * d * vocab_size)
  if model == "classifier":
    return float((body + 2 * d * num_classes) / seq_len)
  head = 2 * (4 * d * s.mlp_dim + s.mlp_dim * num_classes)
  return float((2 * body + head) / (2 * seq_len))
