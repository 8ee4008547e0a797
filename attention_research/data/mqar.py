"""Multi-query associative recall (MQAR), Zoology's recall probe, as a TFDS builder.

Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient
Language Models" (HazyResearch/zoology, zoology/data/associative_recall.py,
`multiquery_ar`). A sequence opens with `num_kv_pairs` key-value pairs
(k1 v1 k2 v2 ...); later, each key appears once more as a query and the model
must predict its value. Zoology's construction, followed here:
- keys are distinct draws from [1, vocab_size // 2), values distinct draws
  from [vocab_size // 2, vocab_size);
- the query region after the pairs has (seq_len - 2 * num_kv_pairs) // 2
  even slots; key i is placed at slot gap_i, the gaps drawn without
  replacement with probability proportional to power_a * g**(power_a - 1),
  g = 1, 2, ... (a power law: most queries come soon after the pairs);
- every other position is a random token.
It is a language-model example: inputs = seq[:-1], targets = seq[1:] for a
sequence of seq_len + 1 tokens, and target_mask is True exactly at the query
keys, where the target is the key's value; every other prediction is
unlearnable noise and left out of the loss (Zoology's label -100).

Two small differences from Zoology, both so that targets are the true next
tokens and 0 stays padding: the token after a query key is its value (Zoology
leaves a random token there, which no causal model can see when predicting
it), and random tokens are drawn from [1, vocab_size) rather than
[0, vocab_size). Zoology also asserts vocab_size > seq_len, which the
construction does not need; here the vocabulary must only hold the keys and
values.
"""

import dataclasses

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from attention_research.data import common

NAME = "mqar"
KIND = "lm"


@dataclasses.dataclass(eq=False)
class MQARConfig(tfds.core.BuilderConfig):
  vocab_size: int = 8192   # vocab, length and pairs: Zoology's multiquery_ar defaults
  seq_len: int = 64        # inputs and targets length
  num_kv_pairs: int = 4
  power_a: float = 0.01    # query-gap power law exponent, as in Zoology
  num_train: int = 10_000
  num_test: int = 1_000
  seed: int = 0


def check_options(options) -> dict:
  """Validated options (all fields of MQARConfig) or a ValueError naming the field."""
  opts = {"vocab_size": common.positive_int(NAME, "vocab_size", options["vocab_size"]),
          "seq_len": common.positive_int(NAME, "seq_len", options["seq_len"]),
          "num_kv_pairs": common.positive_int(NAME, "num_kv_pairs", options["num_kv_pairs"]),
          "power_a": common.positive_float(NAME, "power_a", options["power_a"])}
  pairs = opts["num_kv_pairs"]
  if 4 * pairs > opts["seq_len"]:
    raise ValueError(f"{NAME}: option `seq_len` ({opts['seq_len']}) must be >= 4 * "
                     f"num_kv_pairs = {4 * pairs}, to fit the pairs and their queries")
  if pairs > opts["vocab_size"] // 2 - 1:
    raise ValueError(f"{NAME}: option `vocab_size` ({opts['vocab_size']}) is too small for "
                     f"{pairs} distinct keys in [1, vocab_size // 2); it must be >= "
                     f"{2 * pairs + 2}")
  return {**opts, **common.check_common(NAME, options)}


def vocab_size(options) -> int:
  return options["vocab_size"]


def sequence_length(options) -> int:
  """Tokens in every example's inputs."""
  return options["seq_len"]


def num_classes(options) -> None:
  del options
  return None


def query_gap_probabilities(space, power_a) -> np.ndarray:
  """Zoology's power law over the `space` query slots."""
  p = power_a * np.arange(1, space + 1) ** (power_a - 1)
  return p / p.sum()


def guessing_accuracy(num_kv_pairs, *, skip_asked=False) -> float:
  """Query accuracy of a model that recalls nothing but guesses one of the pairs' values.

  Uniformly among all `num_kv_pairs` values: 1 / num_kv_pairs. Skipping the
  values earlier queries already asked for (each key is queried once, and
  its value follows it): the j-th query has num_kv_pairs - j + 1 candidates,
  so the mean is H(num_kv_pairs) / num_kv_pairs (0.52 for 4 pairs).
  """
  if isinstance(num_kv_pairs, bool) or not isinstance(num_kv_pairs, int) or num_kv_pairs < 1:
    raise ValueError(f"{NAME}: num_kv_pairs must be a positive integer, got {num_kv_pairs!r}")
  if not skip_asked:
    return 1.0 / num_kv_pairs
  return sum(1.0 / k for k in range(1, num_kv_pairs + 1)) / num_kv_pairs


def generate(options, split, index) -> dict:
  """Example `index` of `split`: inputs, targets int32 [seq_len], target_mask bool [seq_len]."""
  rng = common.example_rng(options["seed"], split, index)
  vocab, length, pairs = options["vocab_size"], options["seq_len"], options["num_kv_pairs"]
  half = vocab // 2
  keys = 1 + rng.choice(half - 1, size=pairs, replace=False)
  values = half + rng.choice(vocab - half, size=pairs, replace=False)
  context = 2 * pairs
  space = (length - context) // 2
  gaps = rng.choice(space, size=pairs, replace=False,
                    p=query_gap_probabilities(space, options["power_a"]))
  seq = rng.integers(1, vocab, size=length + 1)
  seq[0:context:2], seq[1:context:2] = keys, values
  queries = context + 2 * gaps
  seq[queries], seq[queries + 1] = keys, values
  target_mask = np.zeros(length, bool)
  target_mask[queries] = True
  return {"inputs": seq[:-1].astype(np.int32), "targets": seq[1:].astype(np.int32),
          "target_mask": target_mask}


class MQAR(common.GeneratedBuilder, skip_registration=True):
  """Zoology's multi-query associative recall; options in MQARConfig."""

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
        homepage="https://github.com/HazyResearch/zoology",
        citation="Arora et al. 2023, arXiv:2312.04927")
