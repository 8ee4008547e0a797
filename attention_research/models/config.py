"""From a config to a model: validation, the resolved `Settings`, construction.

    s = models.resolve(config)        # ValueError naming the field, before any compile
    model = models.build(s, vocab_size=256, num_classes=2)

The config is flat (an ml_collections.ConfigDict or a dict; the trainer passes
its whole config, so other fields are left alone). `REQUIRED` fields must be
present; every other field the models read has its default in `DEFAULTS`,
the one place they live. Models are found by name in `transformer.MODELS`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from attention_research import attention
from attention_research.attention import kernels
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


def encoded_length(model, pooling, seq_len) -> int:
  """Tokens the encoder sees: one more than the data has when CLS pooling
  prepends one (never in the decoder)."""
  return seq_len + (pooling == "cls" and model != "decoder")


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
  try:
    attention.variant(name).resolved_options(options)
  except ValueError as e:
    raise ValueError(f"config.attention_options: {e}") from None
  if "alibi_slopes" in options:
    raise ValueError("config.attention_options: set config.pos='alibi' instead of passing "
                     "`alibi_slopes`")
  for key, value in options.items():
    if not isinstance(value, _OPTION_TYPES):
      raise ValueError(f"config.attention_options.{key} must be a number, string, bool or None "
                       f"(models keep options hashable), got {type(value).__name__}")
  return tuple(sorted(options.items()))


def resolve(config) -> transformer.Settings:
  """Validates `config` and resolves it into the models' `Settings`, once per run."""
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
  length = encoded_length(model, _get(config, "pooling"), sizes["max_len"])
  max_position = _check_positions(config, name, head_dim, length, sizes["max_len"])
  tie = _get(config, "tie_embeddings")
  if not isinstance(tie, bool) or (tie and model != "decoder"):
    raise ValueError(f"config.tie_embeddings must be a bool, and True only for model='decoder'; "
                     f"got {tie!r} with model={model!r}")

  s = transformer.Settings(
      model=model, num_layers=sizes["num_layers"], d_model=sizes["d_model"], num_heads=sizes["num_heads"],
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
  option value (a negative window, an unknown feature map, a kernel that
  cannot serve) fails here: in the compute dtype, as the model calls it, and
  as on one device, as the model calls a kernel over a mesh (attention.per_device)."""
  q = jax.ShapeDtypeStruct((1, length, s.num_heads, s.head_dim), s.dtype)
  kv = jax.ShapeDtypeStruct((1, length, s.num_kv_heads, s.head_dim), s.dtype)
  options = dict(s.attention_options)
  if s.pos == "alibi":
    options["alibi_slopes"] = positional.alibi_slopes(s.num_heads)
  fn = attention.get(s.attention)
  try:
    with kernels.tracing_per_device():
      jax.eval_shape(lambda q, k, v: fn(q, k, v, causal=causal, **options), q, kv, kv)
  except ValueError as e:
    raise ValueError(f"config.attention_options for {s.attention!r}: {e}") from e


def validate_config(config):
  """Raises ValueError naming the field and its allowed values for a bad config."""
  resolve(config)


def as_settings(config_or_settings) -> transformer.Settings:
  """Settings as they are, a config resolved."""
  if isinstance(config_or_settings, transformer.Settings):
    return config_or_settings
  return resolve(config_or_settings)


def build(config_or_settings, *, vocab_size, num_classes=None):
  """The flax module for the config's `model` (a config is validated first).

  Args:
    config_or_settings: the flat config (see `REQUIRED` and `DEFAULTS`), or
      what `resolve` made of it.
    vocab_size: token ids are in [0, vocab_size).
    num_classes: output classes; required for "classifier" and "dual_encoder".
  """
  s = as_settings(config_or_settings)
  vocab_size, num_classes = check_sizes(s.model, vocab_size, num_classes)
  return transformer.MODELS[s.model](settings=s, vocab_size=vocab_size, num_classes=num_classes)


def check_sizes(model, vocab_size, num_classes):
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
