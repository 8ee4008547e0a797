"""Text classification of IMDB reviews read as bytes: Long Range Arena's "Text" task.

LRA (Tay et al. 2021, section 3.3; lra_benchmarks/text_classification/
input_pipeline.py) classifies the sentiment of the IMDB movie reviews (Maas
et al. 2011) byte by byte, so that a model has to compose characters into
words before it can read a review: TFDS's `imdb_reviews` (train: 25,000
reviews, test: 25,000, which LRA also validated on), each review's UTF-8
bytes as tokens (tfds ByteTextEncoder: byte + 1, 0 is padding), cut to
`max_len` bytes. The paper reports lengths up to 4K (`max_len=4096`, the
default); its released config uses 1000 (`max_len=1000`), a quicker variant.

The records are not generated here: TFDS's dataset is read as it is, from
the data_dir, in array_record files. Nothing is downloaded at run time; on a
machine with network, `tfds build imdb_reviews --file_format=array_record
--data_dir=DIR` prepares it (TFDS downloads the 80 MB archive), and DIR is
copied or uploaded (a gs:// data_dir) to where training runs.
"""

import dataclasses

from attention_research.data import common

NAME = "lra_text"
KIND = "classification"
SOURCE = "imdb_reviews/plain_text:1.0.0"  # TFDS name/config:version
SPLITS = {"train": "train", "test": "test"}  # ours -> the source's


@dataclasses.dataclass(frozen=True)
class LRATextOptions:
  max_len: int = 4096    # bytes a review keeps (LRA's paper: 4K; its released config: 1000)


def check_options(options) -> dict:
  """Validated options (all fields of LRATextOptions) or a ValueError naming the field."""
  return {"max_len": common.positive_int(NAME, "max_len", options["max_len"])}


def vocab_size(options) -> int:
  del options
  return 257  # 256 byte values + padding


def sequence_length(options) -> int:
  return options["max_len"]


def num_classes(options) -> int:
  del options
  return 2


def convert(options, record) -> dict:
  """One `imdb_reviews` record -> {"inputs": int32 [<= max_len] bytes + 1, "label": 0 or 1}."""
  return {"inputs": common.byte_tokens(record["text"], options["max_len"]),
          "label": int(record["label"])}
