"""CIFAR-10 images read as sequences of grey pixels: Long Range Arena's "Image" task.

LRA (Tay et al. 2021, section 3.5; lra_benchmarks/image/input_pipeline.py)
classifies CIFAR-10 (Krizhevsky 2009) from its 32x32 images turned grey
(tf.image.rgb_to_grayscale: 0.2989 R + 0.5870 G + 0.1140 B, rounded) and
flattened in raster order: 1024 tokens, one per pixel, with no 2D prior.
LRA trains on the first 90% of the training set, validates on the last 10%
and tests on the test set; here the splits are `train` (the first
`num_train`, 45,000 by default), `validation` (the rest of the 50,000) and
`test` (10,000). A token is the grey value + 1 (0 stays padding).

The records come from CIFAR-10's own python files, which the user downloads
(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, 163 MB) into the
manual directory, `<data_dir>/downloads/manual/` (TFDS's default): TFDS's
`cifar10` stores PNGs, which need TensorFlow to decode. The archive (or its
extracted `cifar-10-batches-py/`) is read once, on first use, into this
task's own array_record files; nothing is downloaded at run time.
"""

import dataclasses
import io
import pickle
import tarfile

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from attention_research import storage
from attention_research.data import common

NAME = "lra_image"
KIND = "classification"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
GREY = np.array([0.2989, 0.5870, 0.1140])  # tf.image.rgb_to_grayscale's weights


@dataclasses.dataclass(eq=False)
class LRAImageConfig(tfds.core.BuilderConfig):
  num_train: int = 45_000   # of CIFAR-10's 50,000 training images; the rest validate


def check_options(options) -> dict:
  """Validated options (all fields of LRAImageConfig) or a ValueError naming the field."""
  num_train = common.positive_int(NAME, "num_train", options["num_train"])
  if num_train >= 50_000:
    raise ValueError(f"{NAME}: option `num_train` must be below 50000 (CIFAR-10's training "
                     f"images; the rest are the validation split), got {num_train}")
  return {"num_train": num_train}


def vocab_size(options) -> int:
  del options
  return 257  # 256 grey values + padding


def sequence_length(options) -> int:
  del options
  return 32 * 32


def num_classes(options) -> int:
  del options
  return 10


def grey_tokens(rgb) -> np.ndarray:
  """CIFAR-10's rows (int [n, 3072]: 1024 red, 1024 green, 1024 blue values) as
  grey pixel tokens int32 [n, 1024], value + 1."""
  channels = np.asarray(rgb, np.float64).reshape(-1, 3, 1024)
  grey = np.rint(np.einsum("c,ncp->np", GREY, channels))
  return np.clip(grey, 0, 255).astype(np.int32) + 1


def check_manual(manual_dir):
  """A ValueError saying where to get CIFAR-10 unless `manual_dir` holds its archive
  or the folder extracted from it."""
  manual_dir = storage.path(manual_dir)
  if not ((manual_dir / FOLDER).exists() or (manual_dir / ARCHIVE).exists()):
    raise ValueError(f"task {NAME!r} reads CIFAR-10's python files, found in neither "
                     f"{manual_dir / ARCHIVE} nor {manual_dir / FOLDER}; nothing is downloaded "
                     f"at run time: download {URL} on a machine with network and put it in "
                     f"{manual_dir}")


def read_batches(manual_dir, names):
  """(rows uint8 [n, 3072], labels [n]) of CIFAR-10's python files `names`, from the
  extracted folder or the archive in `manual_dir` (see check_manual)."""
  check_manual(manual_dir)
  manual_dir = storage.path(manual_dir)
  folder, archive = manual_dir / FOLDER, manual_dir / ARCHIVE
  if folder.exists():
    blobs = {name: (folder / name).read_bytes() for name in names}
  else:
    with archive.open("rb") as f, tarfile.open(fileobj=io.BytesIO(f.read())) as tar:
      blobs = {name: tar.extractfile(f"{FOLDER}/{name}").read() for name in names}
  rows, labels = [], []
  for name in names:
    batch = pickle.loads(blobs[name], encoding="bytes")
    rows.append(np.asarray(batch[b"data"], np.uint8))
    labels.append(np.asarray(batch[b"labels"], np.int64))
  return np.concatenate(rows), np.concatenate(labels)


class LRAImage(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """CIFAR-10 as grey pixel sequences; options in LRAImageConfig."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  code_path = epath.Path(__file__)  # where TFDS looks for checksums
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Download {URL} into the manual directory."

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=common.classification_features(10), supervised_keys=("inputs", "label"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html")

  def _split_generators(self, dl_manager):
    train, train_labels = read_batches(dl_manager.manual_dir, TRAIN_FILES)
    test, test_labels = read_batches(dl_manager.manual_dir, ("test_batch",))
    n = self.builder_config.num_train
    return {"train": self._generate_examples(train[:n], train_labels[:n]),
            "validation": self._generate_examples(train[n:], train_labels[n:]),
            "test": self._generate_examples(test, test_labels)}

  def _generate_examples(self, rows, labels):
    for i, (tokens, label) in enumerate(zip(grey_tokens(rows), labels)):
      yield i, {"inputs": tokens, "label": int(label)}
