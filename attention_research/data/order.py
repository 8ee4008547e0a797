"""Which marker comes first: a task only position information can solve, as a TFDS builder.

Self-attention without positional encodings is permutation-equivariant, so a
pooled encoder sees a bag of tokens (Vaswani et al. 2017, section 3.5; the
"I love you" / "you love me" claim in docs/design.md). This task makes that
measurable: each sequence holds `num_markers` distinct marker tokens, once
each, among random filler tokens, and the label is which marker comes first.
Both classes (all k classes) have the same token multisets: swapping the
first marker with marker c turns an example of one class into an example of
class c with exactly the same tokens. A model without position information
therefore scores chance (1 / num_markers); any model with it can solve the
task exactly.

Labels cycle with the example index (index % num_markers), so the classes are
balanced exactly; the marker positions and fillers are random.

Token ids: 0 padding, 1..num_markers the markers (marker c is token c + 1),
then filler tokens up to vocab_size - 1.
"""

import dataclasses

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from attention_research.data import common

NAME = "order"
KIND = "classification"


@dataclasses.dataclass(eq=False)
class OrderConfig(tfds.core.BuilderConfig):
  length: int = 64        # tokens per example
  num_markers: int = 2    # = number of classes
  vocab_size: int = 32    # padding, markers and fillers
  num_train: int = 10_000
  num_test: int = 1_000
  seed: int = 0


def check_options(options) -> dict:
  """Validated options (all fields of OrderConfig) or a ValueError naming the field."""
  opts = {"length": common.positive_int(NAME, "length", options["length"]),
          "num_markers": common.positive_int(NAME, "num_markers", options["num_markers"]),
          "vocab_size": common.positive_int(NAME, "vocab_size", options["vocab_size"])}
  markers = opts["num_markers"]
  if markers < 2:
    raise ValueError(f"{NAME}: option `num_markers` must be >= 2, got {markers}")
  if opts["length"] < markers:
    raise ValueError(f"{NAME}: option `length` ({opts['length']}) must be >= num_markers "
                     f"({markers})")
  if opts["vocab_size"] < markers + 2:
    raise ValueError(f"{NAME}: option `vocab_size` ({opts['vocab_size']}) must be >= "
                     f"num_markers + 2 = {markers + 2} (padding, markers, one filler)")
  return {**opts, **common.check_common(NAME, options)}


def vocab_size(options) -> int:
  return options["vocab_size"]


def sequence_length(options) -> int:
  """Tokens in every example."""
  return options["length"]


def num_classes(options) -> int:
  return options["num_markers"]


def marker_token(c) -> int:
  return c + 1


def generate(options, split, index) -> dict:
  """Example `index` of `split`: {"inputs": int32 [length], "label": int}."""
  rng = common.example_rng(options["seed"], split, index)
  k = options["num_markers"]
  label = index % k
  tokens = rng.integers(k + 1, options["vocab_size"], size=options["length"])
  positions = np.sort(rng.choice(options["length"], size=k, replace=False))
  others = rng.permutation([c for c in range(k) if c != label])
  tokens[positions] = [marker_token(c) for c in [label, *others]]
  return {"inputs": tokens.astype(np.int32), "label": label}


class Order(common.GeneratedBuilder, skip_registration=True):
  """Which of num_markers markers comes first; options in OrderConfig."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  # Where TFDS looks for checksums; its own lookup needs importlib_resources.
  code_path = epath.Path(__file__)
  generate = staticmethod(generate)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.classification_features(self.builder_config.num_markers),
        supervised_keys=("inputs", "label"))
