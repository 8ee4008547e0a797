"""Grain pipelines over the prepared tasks: shuffled endless training batches, exact eval.

Every batch is a dict of NumPy arrays, b = this process's batch size:
  inputs        int32 [b, max_len]   token ids, 0 = padding; longer examples are cut
                                     ([b, 2, max_len] for a pair task: its two sequences)
  input_mask    bool  [b, max_len]   True on real tokens (pair: [b, 2, max_len])
  targets       int32 [b] (classification, pair) or [b, max_len] (lm, next tokens)
  target_mask   bool  [b, max_len]   lm only: True where the loss counts
  example_mask  bool  [b]            True = a real example, False = eval padding

Sharding follows one global order. Training reads one endless stream,
shuffled per epoch from `seed` (Grain's index shuffle; epoch e uses a
different permutation), and global batch t is stream elements
[t * G, (t + 1) * G); process p of P takes every P-th of them, G / P in all.
So the set of examples in a global batch does not depend on how many
processes share it, and within an epoch the processes see disjoint examples
whose union is the split. Eval does the same over the stored order of the
split, with ceil(N / G) batches on *every* process (collectives on a pod need
equal counts), padding the tail with example_mask False.

The training iterator is Grain's: `get_state()` is a small JSON-able dict and
`set_state(state)` resumes at exactly the next batch, so the trainer saves it
with its checkpoint.
"""

import functools
import hashlib
import math

import grain
import numpy as np

from attention_research.data import prepare as prepare_lib
from attention_research.data import registry

# Grain's default reads 500 elements ahead on 16 threads; our elements are whole
# batches, so a few threads and a short queue keep memory and startup small.
DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)


def _process(process_index, process_count) -> tuple[int, int]:
  """(index, count), defaulting to JAX's; checked."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (only when the caller did not say)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  count = _positive_int("process_count", process_count)
  is_int = isinstance(process_index, (int, np.integer)) and not isinstance(process_index, bool)
  if not is_int or not 0 <= process_index < count:
    raise ValueError(f"`process_index` must be an integer in [0, process_count={count}), "
                     f"got {process_index!r}")
  return int(process_index), count


def _positive_int(field, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"`{field}` must be a positive integer, got {value!r}")
  return int(value)


def _per_process_batch(global_batch_size, process_count) -> int:
  size = _positive_int("global_batch_size", global_batch_size)
  if size % process_count:
    raise ValueError(f"`global_batch_size` ({size}) must be divisible by process_count "
                     f"({process_count})")
  return size // process_count


def _shuffle_seed(seed) -> int:
  """A 32-bit shuffle seed. Grain uses seed + epoch per epoch, so hashing keeps
  runs with seeds s and s + 1 from sharing permutations one epoch apart."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}")
  digest = hashlib.sha256(f"train-shuffle/{int(seed)}".encode()).digest()
  return int.from_bytes(digest[:4], "little")


def example_features(raw, *, kind, max_len) -> dict:
  """One stored example -> the batch layout above, padded or cut to max_len."""
  if kind == "pair":  # two sequences a row: [2, max_len]
    out = {"inputs": np.zeros((2, max_len), np.int32), "input_mask": np.zeros((2, max_len), bool),
           "example_mask": np.bool_(True), "targets": np.int32(raw["label"])}
    for row, field in enumerate(("inputs1", "inputs2")):
      tokens = np.asarray(raw[field], np.int32)[:max_len]
      out["inputs"][row, :len(tokens)] = tokens
      out["input_mask"][row, :len(tokens)] = True
    return out
  tokens = np.asarray(raw["inputs"], np.int32)[:max_len]
  n = len(tokens)
  out = {"inputs": np.zeros(max_len, np.int32), "input_mask": np.arange(max_len) < n,
         "example_mask": np.bool_(True)}
  out["inputs"][:n] = tokens
  if kind == "classification":
    out["targets"] = np.int32(raw["label"])
  else:
    out["targets"] = np.zeros(max_len, np.int32)
    out["targets"][:n] = np.asarray(raw["targets"], np.int32)[:max_len]
    out["target_mask"] = np.zeros(max_len, bool)
    out["target_mask"][:n] = np.asarray(raw["target_mask"], bool)[:max_len]
  return out


def _padding_batch(kind, max_len, size) -> dict:
  rows = (size, 2, max_len) if kind == "pair" else (size, max_len)
  blank = {"inputs": np.zeros(rows, np.int32), "input_mask": np.zeros(rows, bool),
           "example_mask": np.zeros(size, bool)}
  if kind in ("classification", "pair"):
    blank["targets"] = np.zeros(size, np.int32)
  else:
    blank["targets"] = np.zeros((size, max_len), np.int32)
    blank["target_mask"] = np.zeros((size, max_len), bool)
  return blank


def _source(name, options, data_dir, split) -> grain.MapDataset:
  """The split's raw examples: a generated task's records, or a TFDS dataset's
  records converted by the task (see registry.py) as they are read."""
  task = registry.get_task(name)
  b = prepare_lib.prepare(name, options, data_dir)
  sources = b.as_data_source()
  ours = dict(task.splits) if task.splits is not None else {s: s for s in sources}
  if split not in ours or ours[split] not in sources:
    raise ValueError(f"task {name!r} has no split {split!r}; splits: "
                     f"{sorted(s for s in ours if ours[s] in sources)}")
  ds = grain.MapDataset.source(sources[ours[split]])
  if task.convert is None:
    return ds
  resolved = registry.resolve_options(name, options)
  return ds.map(functools.partial(task.convert, resolved))


def train_iterator(name, options, *, data_dir, global_batch_size, max_len, seed,
                   process_index=None, process_count=None, read_options=None):
  """An endless, checkpointable iterator over this process's training batches.

  Epochs repeat, each reshuffled deterministically from `seed`; each batch
  holds global_batch_size // process_count examples (a ValueError if that
  does not divide). The returned Grain iterator has get_state()/set_state().
  `read_options` (grain.ReadOptions) tunes reading threads and prefetching.
  """
  kind = registry.get_task(name).kind
  max_len = _positive_int("max_len", max_len)
  index, count = _process(process_index, process_count)
  per_process = _per_process_batch(global_batch_size, count)
  shuffle_seed = _shuffle_seed(seed)
  ds = _source(name, options, data_dir, "train")
  ds = ds.shuffle(seed=shuffle_seed).repeat()  # repeat after shuffle: a new order each epoch
  ds = ds[index::count]
  ds = ds.map(lambda raw: example_features(raw, kind=kind, max_len=max_len))
  ds = ds.batch(per_process, drop_remainder=True)
  return iter(ds.to_iter_dataset(read_options or DEFAULT_READ_OPTIONS))


class EvalBatches:
  """This process's eval batches: finite, the same on every pass; len() = batch count."""

  def __init__(self, dataset, *, kind, max_len, per_process, num_batches, read_options):
    self._dataset = dataset  # this process's examples, already in batch layout
    self._read_options = read_options
    self._kind, self._max_len = kind, max_len
    self._per_process, self._num_batches = per_process, num_batches

  def __len__(self) -> int:
    return self._num_batches

  def __iter__(self):
    done = 0
    for batch in self._dataset.batch(self._per_process).to_iter_dataset(self._read_options):
      yield self._pad(batch)
      done += 1
    for _ in range(self._num_batches - done):
      yield _padding_batch(self._kind, self._max_len, self._per_process)

  def _pad(self, batch):
    short = self._per_process - len(batch["example_mask"])
    if not short:
      return batch
    blank = _padding_batch(self._kind, self._max_len, short)
    return {k: np.concatenate([v, blank[k]]) for k, v in batch.items()}


def eval_batches(name, options, *, data_dir, global_batch_size, max_len, split="test",
                 process_index=None, process_count=None, read_options=None) -> EvalBatches:
  """Every example of `split` exactly once, spread over processes like training.

  Each process gets ceil(N / global_batch_size) batches of
  global_batch_size // process_count rows; rows past the split's end are
  zeros with example_mask False. Iterating again gives the same batches.
  """
  kind = registry.get_task(name).kind
  max_len = _positive_int("max_len", max_len)
  index, count = _process(process_index, process_count)
  per_process = _per_process_batch(global_batch_size, count)
  source = _source(name, options, data_dir, split)
  ds = source[index::count]
  ds = ds.map(lambda raw: example_features(raw, kind=kind, max_len=max_len))
  return EvalBatches(ds, kind=kind, max_len=max_len, per_process=per_process,
                     num_batches=math.ceil(len(source) / global_batch_size),
                     read_options=read_options or DEFAULT_READ_OPTIONS)
