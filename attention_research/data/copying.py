"""Copy and reverse: reproduce a random payload after a separator, as a TFDS builder.

The classic sequence-memory probe (Graves et al. 2014, "Neural Turing
Machines", copy; reversal as in Sutskever et al. 2014): `length` random
payload tokens, a separator, then the payload again (`mode="copy"`) or
reversed (`mode="reverse"`). Copying needs content-based lookback over a
fixed distance, reversal a position-dependent one, which is where
positional encodings and efficient attention variants differ.

A language-model example of 2 * length tokens: inputs = seq[:-1],
targets = seq[1:] for seq = payload + [separator] + answer, and target_mask
True only on the predictions of the answer (from the separator on): the
payload is random, so predicting it is noise.

Token ids: 0 padding, 1 the separator, 2..vocab_size-1 payload symbols.
"""

import dataclasses

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from attention_research.data import common

NAME = "copy"
KIND = "lm"
MODES = ("copy", "reverse")
SEPARATOR = 1
FIRST_SYMBOL = 2


@dataclasses.dataclass(eq=False)
class CopyingConfig(tfds.core.BuilderConfig):
  mode: str = "copy"      # "copy" | "reverse"
  length: int = 32        # payload tokens; examples are 2 * length long
  vocab_size: int = 16    # including padding and separator
  num_train: int = 10_000
  num_test: int = 1_000
  seed: int = 0


def check_options(options) -> dict:
  """Validated options (all fields of CopyingConfig) or a ValueError naming the field."""
  opts = {"mode": common.choice(NAME, "mode", options["mode"], MODES),
          "length": common.positive_int(NAME, "length", options["length"]),
          "vocab_size": common.positive_int(NAME, "vocab_size", options["vocab_size"])}
  if opts["vocab_size"] < FIRST_SYMBOL + 1:
    raise ValueError(f"{NAME}: option `vocab_size` must be >= {FIRST_SYMBOL + 1} (padding, "
                     f"separator and at least one symbol), got {opts['vocab_size']}")
  return {**opts, **common.check_common(NAME, options)}


def vocab_size(options) -> int:
  return options["vocab_size"]


def sequence_length(options) -> int:
  """Tokens in every example's inputs: payload, separator, answer but its last token."""
  return 2 * options["length"]


def num_classes(options) -> None:
  del options
  return None


def generate(options, split, index) -> dict:
  """Example `index` of `split`: inputs, targets int32 [2 * length], target_mask bool."""
  rng = common.example_rng(options["seed"], split, index)
  n = options["length"]
  payload = rng.integers(FIRST_SYMBOL, options["vocab_size"], size=n)
  answer = payload if options["mode"] == "copy" else payload[::-1]
  seq = np.concatenate([payload, [SEPARATOR], answer]).astype(np.int32)
  target_mask = np.arange(2 * n) >= n  # predictions made from the separator on
  return {"inputs": seq[:-1], "targets": seq[1:], "target_mask": target_mask}


class Copying(common.GeneratedBuilder, skip_registration=True):
  """Copy or reverse a random payload; options in CopyingConfig."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  # Where TFDS looks for checksums; its own lookup needs importlib_resources.
  code_path = epath.Path(__file__)
  generate = staticmethod(generate)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.lm_features(),
        citation="Graves et al. 2014, arXiv:1410.5401")
