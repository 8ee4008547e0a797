"""Byte-level language modelling on the Python standard library's own source files.

A natural-text corpus that every machine running this code already has, so
nothing downloads: the `.py` files under the interpreter's stdlib directory
(`sysconfig`), without test suites and installed packages (`test/`, `tests/`,
`idle_test/`, `site-packages/`, `dist-packages/`). The split is by file and
fixed: a file is in `test` when the first byte of the SHA-256 of its path
(relative to the stdlib directory) is below `test_fraction` x 256, else in
`train`, so no file is in both and the split does not depend on the order the
files are listed in.

An example is `length + 1` consecutive bytes of its split's files (joined in
path order, each followed by a newline): inputs = the first `length` bytes,
targets the next byte at each position, the loss on every position. Train
examples start at offsets drawn from (seed, index); the `num_test` test
windows are spread evenly over the whole test text (without overlapping), so
the eval samples every part of it, the same windows on every run. Token ids
are byte + 1 (0 is padding), as `common.byte_tokens` makes them; the
trainer's eval reports `bits_per_token`, here bits per byte.

The corpus differs between Python versions and builds (distributions patch
or split off parts of the stdlib), so results depend on it: the options
record the interpreter's version and a digest of the corpus (`corpus`: the
first 16 hex digits of the SHA-256 over every file's path and bytes), filled
in from this machine when left empty; configs/tasks/stdlib_bytes.py fills
them in the config, so a run's config.json records them and a resume on a
machine with another stdlib is an error naming both, never a silent change of
data.
"""

import dataclasses
import functools
import hashlib
import os
import platform
import sysconfig

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from attention_research.data import common

NAME = "stdlib_bytes"
KIND = "lm"
VOCAB_SIZE = 257  # 256 bytes + padding
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages"})


@dataclasses.dataclass(eq=False)
class StdlibBytesConfig(tfds.core.BuilderConfig):
  length: int = 256             # bytes of context; examples are length + 1 bytes
  test_fraction: float = 0.05   # of the files, by a hash of their path
  python_version: str = ""      # "": this interpreter's (platform.python_version())
  corpus: str = ""              # "": this machine's corpus digest
  num_train: int = 20_000
  num_test: int = 1_000
  seed: int = 0


def stdlib_dir() -> str:
  return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=4)
def corpus_files(root) -> tuple:
  """The corpus's files under `root`, as sorted relative paths."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
    relative = os.path.relpath(dirpath, root)
    for name in filenames:
      if name.endswith(".py"):
        found.append(os.path.normpath(os.path.join(relative, name)))
  return tuple(sorted(found))


def in_test(path, test_fraction) -> bool:
  """Whether a file (its path relative to the stdlib directory) is in the test split."""
  return hashlib.sha256(path.encode("utf-8")).digest()[0] < test_fraction * 256


@functools.lru_cache(maxsize=4)
def _corpus(root, test_fraction) -> tuple:
  """(digest, {split: the split's bytes as uint8}) of the corpus under `root`."""
  digest = hashlib.sha256()
  parts = {"train": [], "test": []}
  for path in corpus_files(root):
    with open(os.path.join(root, path), "rb") as f:
      data = f.read()
    digest.update(path.encode("utf-8") + b"\0" + data + b"\0")
    parts["test" if in_test(path, test_fraction) else "train"].append(data + b"\n")
  texts = {split: np.frombuffer(b"".join(p), np.uint8) for split, p in parts.items()}
  return digest.hexdigest()[:16], texts


def corpus_digest(root=None) -> str:
  """This machine's corpus digest (the split does not change it)."""
  return _corpus(root or stdlib_dir(), 0.05)[0]


def check_options(options) -> dict:
  """Validated options (all fields of StdlibBytesConfig) or a ValueError naming the field."""
  length = common.positive_int(NAME, "length", options["length"])
  fraction = common.positive_float(NAME, "test_fraction", options["test_fraction"])
  if not fraction < 1:
    raise ValueError(f"{NAME}: option `test_fraction` must be in (0, 1), got {fraction!r}")
  here_corpus, texts = _corpus(stdlib_dir(), fraction)  # one read gives both
  here_version = platform.python_version()
  version = options["python_version"] or here_version
  corpus = options["corpus"] or here_corpus
  if (version, corpus) != (here_version, here_corpus):
    raise ValueError(
        f"{NAME}: options ask for the stdlib of Python {version} (corpus {corpus}); this "
        f"machine has Python {here_version} with corpus {here_corpus} in {stdlib_dir()}. "
        f"Leave `python_version` and `corpus` empty to use this machine's, or run where "
        f"the asked-for interpreter is")
  for split in common.SPLITS:
    if len(texts[split]) < length + 1:
      raise ValueError(f"{NAME}: the {split} split holds {len(texts[split])} bytes, fewer than "
                       f"one example of `length` + 1 = {length + 1}; lower `length` or raise "
                       f"`test_fraction`")
  opts = {"length": length, "test_fraction": fraction, "python_version": version,
          "corpus": corpus, **common.check_common(NAME, options)}
  windows = len(texts["test"]) // (length + 1)
  if opts["num_test"] > windows:
    raise ValueError(f"{NAME}: option `num_test` must be <= {windows} (the test split's "
                     f"{len(texts['test'])} bytes in windows of {length + 1}), got "
                     f"{opts['num_test']}")
  return opts


def vocab_size(options) -> int:
  del options
  return VOCAB_SIZE


def sequence_length(options) -> int:
  return options["length"]


def num_classes(options) -> None:
  del options
  return None


def generate(options, split, index) -> dict:
  """Example `index` of `split`: inputs, targets int32 [length], target_mask bool."""
  text = _corpus(stdlib_dir(), options["test_fraction"])[1][split]
  span = options["length"] + 1
  if split == "test":
    start = index * ((len(text) - span) // max(options["num_test"] - 1, 1))
  else:
    start = int(common.example_rng(options["seed"], split, index).integers(0, len(text) - span + 1))
  seq = common.byte_tokens(text[start:start + span].tobytes(), span)
  return {"inputs": seq[:-1], "targets": seq[1:],
          "target_mask": np.ones(options["length"], np.bool_)}


class StdlibBytes(common.GeneratedBuilder, skip_registration=True):
  """Windows of the Python standard library's source bytes; options in StdlibBytesConfig."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  code_path = epath.Path(__file__)
  generate = staticmethod(generate)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.lm_features(),
        citation="The Python Software Foundation's standard library source, as installed")
