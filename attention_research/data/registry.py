"""The task registry: every task, found by name, with its options and sizes.

A task says what its examples are (its kind: classification, lm or pair,
its options and sizes) apart from where its records come from, one of:

  generated  a TFDS builder of ours (array_record files, no TensorFlow
             needed) whose BuilderConfig carries the options; the data is
             deterministic given them (seed included), generated into the
             data_dir on first use (prepare.py).
  manual     a TFDS builder of ours that reads files the user downloads
             into the manual directory (`<data_dir>/downloads/manual`) on
             first use (`check_manual` says which are missing and where to
             get them).
  TFDS       an existing TFDS dataset (`SOURCE`, e.g. "imdb_reviews"),
             prepared by the user in array_record files, never downloaded
             here; the task's `convert(options, record)` makes each record
             an example as it is read (pipeline.py).

Adding a task: write one file with its options (a BuilderConfig, or a
dataclass for a TFDS source: one field per option, with its default),
`check_options`, `vocab_size`, `sequence_length`, `num_classes`, and either
the builder (and `generate(options, split, index)`, or `check_manual`), or
`SOURCE`, `SPLITS` and `convert`; then add one `_register` line below.
"""

import dataclasses
import types
from typing import Any, Callable, Mapping, Optional

from attention_research.data import common
from attention_research.data import copying
from attention_research.data import listops
from attention_research.data import lra_image
from attention_research.data import lra_retrieval
from attention_research.data import lra_text
from attention_research.data import mqar
from attention_research.data import order
from attention_research.data import pathfinder
from attention_research.data import stdlib_bytes

KINDS = ("classification", "lm", "pair")


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  kind: str                        # "classification" (targets [b]), "lm" (targets [b, L])
                                   # or "pair" (two sequences a row, targets [b])
  config: type                     # one field per option: a BuilderConfig or a dataclass
  options: Mapping[str, Any]       # option name -> default (read-only)
  check_options: Callable          # full options dict -> validated dict, or ValueError
  vocab_size: Callable             # options -> int (0 is padding)
  sequence_length: Callable        # options -> int: tokens in the longest example
  num_classes: Callable            # options -> int, or None for "lm"
  # Generated tasks (and tasks built from files the user downloads):
  builder: Optional[type] = None   # the tfds GeneratorBasedBuilder
  generate: Optional[Callable] = None  # (options, split, index) -> one raw example
  check_manual: Optional[Callable] = None  # manual_dir -> None, or a ValueError saying
                                           # which files to download (the builder reads them)
  # Tasks read from an existing TFDS dataset:
  source: Optional[str] = None     # its TFDS name, "name/config:version"
  splits: Optional[Mapping[str, str]] = None  # our split -> the source's
  convert: Optional[Callable] = None  # (options, record) -> one raw example


_REGISTRY: dict[str, Task] = {}


def _register(module, config, builder=None):
  if module.KIND not in KINDS:
    raise ValueError(f"task {module.NAME!r}: kind must be one of {KINDS}, got {module.KIND!r}")
  if module.NAME in _REGISTRY:
    raise ValueError(f"task {module.NAME!r} is already registered")
  if (builder is None) == (getattr(module, "SOURCE", None) is None):
    raise ValueError(f"task {module.NAME!r}: give a builder (generated) or SOURCE (a TFDS "
                     f"dataset), exactly one")
  sourced = builder is None
  _REGISTRY[module.NAME] = Task(
      name=module.NAME, kind=module.KIND, config=config,
      options=types.MappingProxyType(common.option_defaults(config)),
      check_options=module.check_options, vocab_size=module.vocab_size,
      sequence_length=module.sequence_length, num_classes=module.num_classes,
      builder=builder, generate=None if sourced else getattr(module, "generate", None),
      check_manual=getattr(module, "check_manual", None),
      source=module.SOURCE if sourced else None,
      splits=types.MappingProxyType(dict(module.SPLITS)) if sourced else None,
      convert=module.convert if sourced else None)


_register(listops, listops.ListOpsConfig, listops.ListOps)
_register(mqar, mqar.MQARConfig, mqar.MQAR)
_register(copying, copying.CopyingConfig, copying.Copying)
_register(order, order.OrderConfig, order.Order)
_register(pathfinder, pathfinder.PathfinderConfig, pathfinder.Pathfinder)
_register(lra_text, lra_text.LRATextOptions)
_register(lra_image, lra_image.LRAImageConfig, lra_image.LRAImage)
_register(lra_retrieval, lra_retrieval.LRARetrievalConfig, lra_retrieval.LRARetrieval)
_register(stdlib_bytes, stdlib_bytes.StdlibBytesConfig, stdlib_bytes.StdlibBytes)


def names() -> list[str]:
  """Registered task names, in registration order."""
  return list(_REGISTRY)


def get_task(name) -> Task:
  """The registry entry for `name`."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown task {name!r}; registered tasks: {names()}")
  return _REGISTRY[name]


def resolve_options(name, options=None) -> dict:
  """The task's defaults overridden by `options` (a dict or ConfigDict), validated."""
  task = get_task(name)
  if options is None:
    options = {}
  elif hasattr(options, "to_dict"):  # ml_collections.ConfigDict
    options = options.to_dict()
  elif not isinstance(options, Mapping):
    raise ValueError(f"task {name!r}: `options` must be a mapping of option -> value, "
                     f"got {type(options).__name__}")
  unknown = sorted(set(options) - set(task.options))
  if unknown:
    raise ValueError(f"task {name!r} does not take option(s) {unknown}; it takes "
                     f"{list(task.options)}")
  return task.check_options({**task.options, **options})


def vocab_size(name, options=None) -> int:
  """Token ids are in [0, vocab_size); 0 is padding."""
  return get_task(name).vocab_size(resolve_options(name, options))


def sequence_length(name, options=None) -> int:
  """Tokens in the task's longest example (a model's max_len must reach it)."""
  return get_task(name).sequence_length(resolve_options(name, options))


def num_classes(name, options=None) -> Optional[int]:
  """Classes of a classification task; None for an "lm" task."""
  return get_task(name).num_classes(resolve_options(name, options))
