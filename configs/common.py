"""What every config shares: the argument parser and the base config.

A config file is `get_config(arg)`, where `arg` is the text after the colon
in `--config=configs/tasks/mqar.py:scale=cpu,attention=local`. Fields are
then overridable one by one with `--config.<field>=<value>`.
"""

import difflib
import math

from ml_collections import config_dict


def parse_arg(arg, **defaults):
  """'key=value,...' -> ConfigDict over exactly `defaults`' keys, typed like them.

  An unknown key is a ValueError listing the allowed ones (a silently ignored
  key is how a sweep runs the wrong experiment).
  """
  parsed = config_dict.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"config argument {item!r} is not key=value; allowed keys: "
                       f"{sorted(defaults)}")
    if name not in defaults:
      raise ValueError(f"unknown config argument {name!r}; allowed: {sorted(defaults)}")
    kind = type(defaults[name])
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {name!r} must be true or false, got {value!r}")
      parsed[name] = value.lower() in ("true", "1")
    else:
      try:
        parsed[name] = kind(value)
      except ValueError:
        raise ValueError(f"config argument {name!r} must be {kind.__name__}, got "
                         f"{value!r}") from None
  return parsed


def sweep_arg(arg, **extra):
  """A sweep config's argument: scale (cpu | paper) and seeds (how many, 0 to seeds - 1).

  Every recorded sweep runs 3 seeds, so that each cell has an interval; seeds=1
  is the quick look. `extra`: the config's own keys and their defaults.
  """
  parsed = parse_arg(arg, scale="cpu", seeds=3, **extra)
  one_of("scale", parsed.scale, ("cpu", "paper"))
  if parsed.seeds < 1:
    raise ValueError(f"config argument seeds={parsed.seeds}; allowed: an integer >= 1")
  return parsed


def seed_grid(h, arg, first=0, **extra):
  """The seeds a sweep config's argument asks for, as a grid: seed first to first + seeds - 1."""
  return h.sweep("seed", list(range(first, first + sweep_arg(arg, **extra).seeds)))


def one_of(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"config argument {name}={value!r}; allowed: {list(allowed)}")
  return value


def attention_options(name, length):
  """Options that keep a sparse variant sparse at `length` tokens.

  The registry's defaults (a window or stride of 128, BigBird's 8 blocks of
  64) reach every key of a CPU-scale sequence, which makes the variant dense
  attention at a sparse variant's cost. These give each query about an
  eighth of the keys (strided: about 2 sqrt(L); bigbird: blocks of at least
  2 tokens, a quarter of the keys at 64); other variants keep their defaults.
  """
  if name == "local":
    return {"window": max(1, length // 16)}
  if name == "strided":
    return {"stride": max(2, round(math.sqrt(length) / 2))}
  if name == "bigbird":
    return {"block_size": max(2, length // 64)}
  return {}


def check_fields(config):
  """A ValueError naming every top-level field the base config does not have.

  Nested options (task_options, attention_options) are checked against the
  task and the variant by the trainer, which lists what they take.
  """
  allowed = sorted(base_config().keys())
  unknown = sorted(set(config.keys()) - set(allowed))
  if unknown:
    field = unknown[0]
    close = difflib.get_close_matches(field, allowed, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown config field `{field}`; {hint}allowed fields: "
                     f"{', '.join(allowed)}")


def base_config():
  """Every field the trainer and the models read, with their defaults."""
  c = config_dict.ConfigDict()
  # Which preset of the config file built this (recorded with the results;
  # the trainer does not read it).
  c.scale = "cpu"
  # Task and data (see attention_research.data for each task's options).
  c.task = "mqar"
  c.task_options = config_dict.ConfigDict()
  c.data_dir = config_dict.placeholder(str)      # None: TFDS's default (~/tensorflow_datasets)
  c.max_len = 64                                 # sequences are padded/truncated to this

  # Model (see attention_research.models.validate_config for allowed values).
  c.model = "decoder"                            # classifier | dual_encoder | decoder
  c.attention = "dense"                          # any name in attention.names()
  c.attention_options = config_dict.ConfigDict()
  c.num_layers = 2
  c.d_model = 64
  c.num_heads = 4
  c.num_kv_heads = config_dict.placeholder(int)  # None: num_heads (no GQA)
  c.head_dim = config_dict.placeholder(int)      # None: d_model // num_heads
  c.mlp_dim = 256
  c.activation = "gelu"
  c.norm = "pre"                                 # pre | post LayerNorm
  c.dropout = 0.0
  c.attention_dropout = 0.0
  c.pos = "rope"                                 # none | sinusoidal | learned | rope | alibi
  c.max_position = config_dict.placeholder(int)  # learned table; None: the encoded length
  c.rope_base = 10000.0
  c.init = "xavier_uniform"                      # xavier_uniform | he_normal | lecun_normal | small
  c.pooling = "mean"                             # cls | mean (classifiers)
  c.tie_embeddings = False
  c.compute_dtype = "float32"                    # float32 | bfloat16

  # Optimisation.
  c.total_steps = 1000
  c.batch_size = 64                              # global, over all devices and processes
  c.learning_rate = 1e-3
  c.schedule = "cosine"                          # cosine | rsqrt | constant, after warmup
  c.warmup_steps = 100
  c.weight_decay = 0.01
  c.grad_clip = 1.0                              # global norm; 0 turns clipping off
  c.adam_b1 = 0.9
  c.adam_b2 = 0.98
  c.adam_eps = 1e-8
  c.seed = 0

  # Devices (attention_research/sharding.py): the size of each mesh axis; -1
  # takes the devices left over. The default splits the batch over all of them.
  c.mesh = config_dict.ConfigDict(dict(data=-1, fsdp=1, tensor=1, context=1))
  c.context_parallel = "ring"                    # ring | all_gather, when mesh.context > 1

  # Bookkeeping.
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.num_eval_batches = config_dict.placeholder(int)  # None: the whole eval split
  # "a,b": an XProf trace of train steps a to b in the workdir (TensorBoard's
  # profile plugin reads it); None: no trace.
  c.profile_steps = config_dict.placeholder(str)
  return c
