"""What the generated-task builders share: option checks, config names, splits.

Every generated task is a TFDS `GeneratorBasedBuilder` whose `BuilderConfig`
carries the task's options. Two rules keep a data_dir trustworthy across
sweeps:
- the config name is spelled out from *all* options (`config_name`), so two
  option sets never share a directory and a directory says what it holds;
- an example depends only on (seed, split, index) (`example_rng`,
  `example_seed`), so the data is the same on every machine and the first n
  examples do not change when num_train grows.
"""

import dataclasses
import hashlib
import math
import random

import numpy as np
import tensorflow_datasets as tfds

SPLITS = ("train", "test")  # every task also takes num_train, num_test and seed


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(task, field, value) -> int:
  if not _is_int(value) or value < 1:
    raise ValueError(f"{task}: option `{field}` must be a positive integer, got {value!r}")
  return int(value)


def non_negative_int(task, field, value) -> int:
  if not _is_int(value) or value < 0:
    raise ValueError(f"{task}: option `{field}` must be an integer >= 0, got {value!r}")
  return int(value)


def positive_float(task, field, value) -> float:
  if (not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool)
      or not math.isfinite(value) or value <= 0):
    raise ValueError(f"{task}: option `{field}` must be a positive number, got {value!r}")
  return float(value)


def choice(task, field, value, allowed) -> str:
  if value not in allowed:
    raise ValueError(f"{task}: option `{field}` must be one of {list(allowed)}, got {value!r}")
  return value


def check_common(task, options) -> dict:
  """Checks num_train, num_test and seed; returns them normalised."""
  return {"num_train": positive_int(task, "num_train", options["num_train"]),
          "num_test": positive_int(task, "num_test", options["num_test"]),
          "seed": non_negative_int(task, "seed", options["seed"])}


def config_name(options) -> str:
  """A TFDS config name that spells out every option, in the given order.

  E.g. {"length": 16, "mode": "copy"} -> "length16-modecopy". Keys come in a
  fixed order, so the name is unique per option set; it matches TFDS's
  `[\\w+.-]+` so `tfds.builder("copying/<name>")` can read it back.
  """
  parts = []
  for key, value in options.items():
    text = repr(value) if isinstance(value, float) else str(value)
    parts.append(f"{key}{text.replace('+', '')}")
  return "-".join(parts)


def example_seed(seed, split, index) -> int:
  """A 64-bit seed for one example, independent of every other example."""
  digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
  return int.from_bytes(digest[:8], "little")


def example_rng(seed, split, index) -> np.random.Generator:
  return np.random.default_rng(example_seed(seed, split, index))


def example_random(seed, split, index) -> random.Random:
  """A pure-Python generator: much cheaper per call than NumPy's for tree building."""
  return random.Random(example_seed(seed, split, index))


_BASE_FIELDS = frozenset(f.name for f in dataclasses.fields(tfds.core.BuilderConfig))


def option_defaults(config_cls) -> dict:
  """A task's options and their defaults: the fields its BuilderConfig adds."""
  return {f.name: f.default for f in dataclasses.fields(config_cls) if f.name not in _BASE_FIELDS}


def config_options(config) -> dict:
  """The options a BuilderConfig carries, as a dict."""
  return {name: getattr(config, name) for name in option_defaults(type(config))}


def make_config(config_cls, options):
  """A BuilderConfig for validated `options`, named after all of them."""
  ordered = {name: options[name] for name in option_defaults(config_cls)}
  return config_cls(name=config_name(ordered), **ordered)


def byte_tokens(data, max_len) -> np.ndarray:
  """Text (str, as UTF-8) or bytes as tokens int32 [<= max_len]: each byte + 1, so 0
  stays padding (tfds ByteTextEncoder's ids, as Long Range Arena reads text)."""
  data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
  return np.frombuffer(data[:max_len], np.uint8).astype(np.int32) + 1


def lm_features():
  """An LM example: next-token targets, and where the loss counts."""
  return tfds.features.FeaturesDict({
      "inputs": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "targets": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "target_mask": tfds.features.Tensor(shape=(None,), dtype=np.bool_)})


def classification_features(num_classes):
  return tfds.features.FeaturesDict({
      "inputs": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "label": tfds.features.ClassLabel(num_classes=num_classes)})


class GeneratedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What every generated task's builder shares: a split per SPLITS, sized by
  the config's num_<split>, filled by the task's `generate(options, split, i)`.

  A task's builder adds name, VERSION, code_path, `generate` and `_info`.
  """

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, getattr(self.builder_config, f"num_{split}"))
            for split in SPLITS}

  def _generate_examples(self, split, num_examples):
    options = config_options(self.builder_config)
    for i in range(num_examples):
      yield i, type(self).generate(options, split, i)
