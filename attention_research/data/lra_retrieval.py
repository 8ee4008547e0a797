"""Do two papers cite one another? Long Range Arena's "Retrieval" task, as byte pairs.

LRA (Tay et al. 2021, section 3.4; lra_benchmarks/matching/input_pipeline.py)
asks whether one paper of the ACL Anthology Network (Radev et al. 2013)
cites the other, from both papers' text read byte by byte: each document
goes through the same encoder on its own, and a head compares the two
(the `dual_encoder` model: [u, v, u * v, u - v], as LRA's). Each document's
UTF-8 bytes are its tokens (byte + 1, 0 is padding), cut to `max_len` bytes
(LRA: 4000, after cutting the text to 10,000 characters).

The pairs come from LRA's release (lra_release.gz, 7 GB, which holds them as
`lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv`: tab-separated,
no header, columns label, id1, id2, text1, text2), which the user downloads
and puts (the three files) into the manual directory,
`<data_dir>/downloads/manual/`. They are read once, on first use, into this
task's own array_record files; nothing is downloaded at run time. Splits:
train, validation (LRA's eval) and test.
"""

import dataclasses

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from attention_research import storage
from attention_research.data import common

NAME = "lra_retrieval"
KIND = "pair"
FILES = {"train": "new_aan_pairs.train.tsv", "validation": "new_aan_pairs.eval.tsv",
         "test": "new_aan_pairs.test.tsv"}
URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
_CHARS = 10_000  # LRA cut each text to this many characters before encoding it


@dataclasses.dataclass(eq=False)
class LRARetrievalConfig(tfds.core.BuilderConfig):
  max_len: int = 4000    # bytes a document keeps (LRA's max_length)


def check_options(options) -> dict:
  """Validated options (all fields of LRARetrievalConfig) or a ValueError naming the field."""
  return {"max_len": common.positive_int(NAME, "max_len", options["max_len"])}


def vocab_size(options) -> int:
  del options
  return 257  # 256 byte values + padding


def sequence_length(options) -> int:
  """Tokens in a document (each of the pair's two)."""
  return options["max_len"]


def num_classes(options) -> int:
  del options
  return 2


def check_manual(manual_dir):
  """A ValueError saying where to get the pairs unless `manual_dir` holds all three files."""
  manual_dir = storage.path(manual_dir)
  missing = [name for name in FILES.values() if not (manual_dir / name).exists()]
  if missing:
    raise ValueError(f"task {NAME!r} reads LRA's citation pairs, and {manual_dir} lacks "
                     f"{missing}; nothing is downloaded at run time: download {URL} on a "
                     f"machine with network and put lra_release/tsv_data/"
                     f"new_aan_pairs.{{train,eval,test}}.tsv in {manual_dir}")


def tokens(text, max_len) -> np.ndarray:
  """A document's tokens: its first 10,000 characters' UTF-8 bytes, cut to max_len, + 1."""
  return common.byte_tokens(text[:_CHARS], max_len)


def read_pairs(path):
  """(label, text1, text2) of each line of an AAN pairs file (LRA's columns)."""
  for line in storage.path(path).read_text(encoding="utf-8").splitlines():
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != 5:
      raise ValueError(f"{path}: a line has {len(fields)} tab-separated fields, expected 5 "
                       f"(label, id1, id2, text1, text2): {line[:80]!r}")
    yield int(float(fields[0])), fields[3], fields[4]


class LRARetrieval(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """AAN citation pairs as two byte documents; options in LRARetrievalConfig."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  code_path = epath.Path(__file__)  # where TFDS looks for checksums
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put LRA's new_aan_pairs.*.tsv (from {URL}) here."

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "inputs1": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "inputs2": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "label": tfds.features.ClassLabel(num_classes=2)}),
        homepage="https://github.com/google-research/long-range-arena")

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(dl_manager.manual_dir / name)
            for split, name in FILES.items()}

  def _generate_examples(self, path):
    max_len = self.builder_config.max_len
    for i, (label, text1, text2) in enumerate(read_pairs(path)):
      yield i, {"inputs1": tokens(text1, max_len), "inputs2": tokens(text2, max_len),
                "label": label}
