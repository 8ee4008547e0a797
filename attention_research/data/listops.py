"""ListOps: evaluate nested list operations, a Long Range Arena task, as a TFDS builder.

ListOps (Nangia and Bowman 2018, "ListOps: A Diagnostic Dataset for Latent
Tree Learning"), in the form Long Range Arena uses (Tay et al. 2020, "Long
Range Arena: A Benchmark for Efficient Transformers", lra_benchmarks/data/
listops.py): operators MIN, MAX, MED (the median truncated to an integer,
`int(np.median(args))`) and SM (sum mod 10) over the digits 0-9, nested;
the label is the value of the whole expression, so 10 classes. Example:

    [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]   ->   5

Differences from LRA, on purpose:
- The brackets are tokens (`form="brackets"`, the default). LRA's tokenizer
  (lra_benchmarks/listops/input_pipeline.py: tfds.deprecated.text.Tokenizer,
  alphanumeric runs) dropped the brackets, keeping MIN, MAX, MED, SM and
  digits, which leaves the nesting ambiguous; here "[MIN" etc. open and "]"
  closes an operator. `form="lra"` drops the "]" tokens as LRA did (the
  operators keep their ids): the same trees and labels, with the lengths
  (`min_len`, `max_len`) still counted with the brackets, as LRA's generator
  counted them before tokenizing.
- Lengths are hit constructively, not by rejection: a target length is drawn
  uniformly from the lengths in [min_len, max_len] (inclusive; LRA's bounds
  were exclusive) that a tree of at most `max_depth` nested operators with
  2..`max_args` arguments can have, and the tree is grown to exactly that
  many tokens. LRA samples trees (an argument is an operator with
  probability 0.25) and rejects those outside the length range, which is too
  slow for long sequences; here an argument is a digit with probability 0.75
  where the length budget allows it, else a sub-expression whose size is
  drawn uniformly from the sizes that keep the rest of the budget feasible.
- `max_depth` counts nested operators. LRA's generator starts at depth 1 and
  makes leaves at depth max_depth, so its max_depth=10 allows 9 levels.
- Examples are not deduplicated (LRA kept a set); at lengths of tens of
  tokens and more, repeats are vanishingly rare.

Token ids: 0 is padding, digits d are d + 1, then "[MIN", "[MAX", "[MED",
"[SM", "]" (`TOKENS`, `decode`).
"""

import dataclasses
import functools

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from attention_research.data import common

NAME = "listops"
KIND = "classification"

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
TOKENS = ("<pad>",) + tuple(str(d) for d in range(10)) + OPERATORS + ("]",)
TOKEN_ID = {token: i for i, token in enumerate(TOKENS)}
CLOSE = TOKEN_ID["]"]
NUM_CLASSES = 10
FORMS = ("brackets", "lra")
_LEAF_PROBABILITY = 0.75  # LRA's VALUE_P = 0.25 is the chance of an operator


@dataclasses.dataclass(eq=False)
class ListOpsConfig(tfds.core.BuilderConfig):
  max_depth: int = 10   # most operators nested inside one another
  max_args: int = 10    # arguments per operator: 2..max_args
  min_len: int = 32     # tokens, brackets included
  max_len: int = 512
  form: str = "brackets"  # brackets | lra (LRA's tokens: no "]")
  num_train: int = 20_000
  num_test: int = 2_000
  seed: int = 0


def check_options(options) -> dict:
  """Validated options (all fields of ListOpsConfig) or a ValueError naming the field."""
  opts = {"max_depth": common.positive_int(NAME, "max_depth", options["max_depth"]),
          "max_args": common.positive_int(NAME, "max_args", options["max_args"]),
          "min_len": common.positive_int(NAME, "min_len", options["min_len"]),
          "max_len": common.positive_int(NAME, "max_len", options["max_len"])}
  opts["form"] = common.choice(NAME, "form", options["form"], FORMS)
  if opts["max_args"] < 2:
    raise ValueError(f"{NAME}: option `max_args` must be >= 2, got {opts['max_args']}")
  if opts["max_len"] < opts["min_len"]:
    raise ValueError(f"{NAME}: option `max_len` ({opts['max_len']}) must be >= `min_len` "
                     f"({opts['min_len']})")
  if not feasible_lengths(opts["max_depth"], opts["max_args"], opts["min_len"], opts["max_len"]):
    raise ValueError(f"{NAME}: no expression with max_depth={opts['max_depth']} and "
                     f"max_args={opts['max_args']} has a length in "
                     f"[min_len, max_len] = [{opts['min_len']}, {opts['max_len']}]")
  return {**opts, **common.check_common(NAME, options)}


def vocab_size(options) -> int:
  del options
  return len(TOKENS)


def sequence_length(options) -> int:
  """Tokens in the longest example (brackets counted; in form "lra" a bound, as the
  "]" tokens are dropped)."""
  return options["max_len"]


def num_classes(options) -> int:
  del options
  return NUM_CLASSES


def decode(ids) -> str:
  """Token ids back to text (padding dropped), for reading examples."""
  return " ".join(TOKENS[i] for i in np.asarray(ids).tolist() if i)


# --- which sizes are reachable -----------------------------------------------
# Sets of sizes are Python ints used as bitsets (bit n set = size n reachable):
# shifts and ors on 512-bit ints are fast, and a membership test is O(1).

@functools.lru_cache(maxsize=16)
def _size_tables(max_depth, max_args, max_len):
  """(sizes, sums, arities) for trees of at most max_len tokens.

  sizes[h]: bitset of the token counts a tree with <= h nested operators can have;
  sums[h][k]: bitset of the totals of k such trees;
  arities[h][m]: the argument counts k an operator at height h can have when
  its arguments (height h - 1) hold m tokens in all.
  """
  limit = (1 << (max_len + 1)) - 1
  sizes, sums, arities = [0b10], [], [()]  # height 0: a single digit, 1 token
  for h in range(max_depth):
    members = [n for n in range(1, max_len + 1) if sizes[h] >> n & 1]
    row = [1]  # the empty sum is 0
    for _ in range(max_args):
      total = 0
      for n in members:
        total |= row[-1] << n
      row.append(total & limit)
    sums.append(row)
    arities.append([tuple(k for k in range(2, max_args + 1) if row[k] >> m & 1)
                    for m in range(max_len + 1)])
    # an operator: its token, its arguments, the closing bracket
    grown = 0b10
    for k in range(2, max_args + 1):
      grown |= row[k] << 2
    sizes.append(grown & limit)
  return sizes, sums, arities


@functools.lru_cache(maxsize=16)
def feasible_lengths(max_depth, max_args, min_len, max_len) -> tuple[int, ...]:
  """The expression lengths in [min_len, max_len] these limits allow."""
  sizes = _size_tables(max_depth, max_args, max_len)[0]
  return tuple(n for n in range(min_len, max_len + 1) if sizes[max_depth] >> n & 1)


# --- generation --------------------------------------------------------------
# Hot loops: random() scaled to an integer is a third of randrange's cost, and
# digits are written inline rather than through a recursive call each.

def _apply(op, args) -> int:
  if op == "[MIN":
    return min(args)
  if op == "[MAX":
    return max(args)
  if op == "[MED":
    ordered = sorted(args)
    mid = len(ordered) // 2
    # LRA's int(np.median(args)): the mean of the middle two, truncated
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
  return sum(args) % 10


def _argument_sizes(rnd, budget, k, sizes, sums):
  """Splits `budget` tokens into k argument sizes, each in `sizes`, order shuffled."""
  parts = []
  for left in range(k, 1, -1):
    rest = sums[left - 1]
    if rnd.random() < _LEAF_PROBABILITY and rest >> (budget - 1) & 1:
      size = 1
    else:
      size = None
      for _ in range(64):  # the reachable sizes are dense, so this almost always hits
        guess = 1 + int(rnd.random() * (budget - left + 1))  # uniform in [1, budget - left + 1]
        if sizes >> guess & 1 and rest >> (budget - guess) & 1:
          size = guess
          break
      if size is None:
        size = rnd.choice([n for n in range(1, budget - left + 2)
                           if sizes >> n & 1 and rest >> (budget - n) & 1])
    parts.append(size)
    budget -= size
  parts.append(budget)
  for i in range(k - 1, 0, -1):  # Fisher-Yates: the big arguments land anywhere
    j = int(rnd.random() * (i + 1))
    parts[i], parts[j] = parts[j], parts[i]
  return parts


def _grow(rnd, n, height, tables, out) -> int:
  """Appends an operator tree of exactly n >= 4 tokens with <= `height` nested
  operators to `out`; returns its value."""
  sizes, sums, arities = tables
  ks = arities[height][n - 2]
  k = ks[int(rnd.random() * len(ks))]
  op = OPERATORS[int(rnd.random() * len(OPERATORS))]
  out.append(TOKEN_ID[op])
  args = []
  for size in _argument_sizes(rnd, n - 2, k, sizes[height - 1], sums[height - 1]):
    if size == 1:
      value = int(rnd.random() * 10)
      out.append(value + 1)
    else:
      value = _grow(rnd, size, height - 1, tables, out)
    args.append(value)
  out.append(CLOSE)
  return _apply(op, args)


def generate(options, split, index) -> dict:
  """Example `index` of `split`: {"inputs": int32 [n], "label": int}."""
  rnd = common.example_random(options["seed"], split, index)
  depth, args = options["max_depth"], options["max_args"]
  lengths = feasible_lengths(depth, args, options["min_len"], options["max_len"])
  tables = _size_tables(depth, args, options["max_len"])
  n = lengths[int(rnd.random() * len(lengths))]
  if n == 1:  # min_len = 1 allows a bare digit
    label = int(rnd.random() * 10)
    return {"inputs": np.asarray([label + 1], np.int32), "label": label}
  out = []
  label = _grow(rnd, n, depth, tables, out)
  if options["form"] == "lra":
    out = [token for token in out if token != CLOSE]
  return {"inputs": np.asarray(out, np.int32), "label": label}


class ListOps(common.GeneratedBuilder, skip_registration=True):
  """ListOps (LRA's task; brackets kept unless form="lra"); options in ListOpsConfig."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  # Where TFDS looks for checksums; its own lookup needs importlib_resources.
  code_path = epath.Path(__file__)
  generate = staticmethod(generate)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.classification_features(NUM_CLASSES),
        supervised_keys=("inputs", "label"),
        homepage="https://github.com/google-research/long-range-arena",
        citation="Nangia and Bowman 2018, arXiv:1804.06028; Tay et al. 2020, arXiv:2011.04006")
