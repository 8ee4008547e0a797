"""The task registry: every task, found by name, with its options and sizes.

Each task is one file holding a TFDS builder (array_record files, no
TensorFlow needed) whose BuilderConfig carries the task's options; the data
is deterministic given the options (seed included). `prepare.py` generates a
task into a data_dir, `pipeline.py` turns it into batches.

Adding a task: write one file with a BuilderConfig (one field per option,
with its default), `check_options`, `vocab_size`, `sequence_length`,
`num_classes`, the builder and a `generate(options, split, index)` function,
then add one `_register` line below.
"""

import dataclasses
import types
from typing import Any, Callable, Mapping, Optional

from attention_research.data import common
from attention_research.data import copying
from attention_research.data import listops
from attention_research.data import mqar
from attention_research.data import order

KINDS = ("classification", "lm")


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  kind: str                        # "classification" (targets [b]) or "lm" (targets [b, L])
  builder: type                    # the tfds GeneratorBasedBuilder
  config: type                     # its BuilderConfig: one field per option
  options: Mapping[str, Any]       # option name -> default (read-only)
  check_options: Callable          # full options dict -> validated dict, or ValueError
  vocab_size: Callable             # options -> int (0 is padding)
  sequence_length: Callable        # options -> int: tokens in the longest example
  num_classes: Callable            # options -> int, or None for "lm"
  generate: Callable               # (options, split, index) -> one raw example


_REGISTRY: dict[str, Task] = {}


def _register(module, builder, config):
  if module.KIND not in KINDS:
    raise ValueError(f"task {module.NAME!r}: kind must be one of {KINDS}, got {module.KIND!r}")
  if module.NAME in _REGISTRY:
    raise ValueError(f"task {module.NAME!r} is already registered")
  _REGISTRY[module.NAME] = Task(
      name=module.NAME, kind=module.KIND, builder=builder, config=config,
      options=types.MappingProxyType(common.option_defaults(config)),
      check_options=module.check_options, vocab_size=module.vocab_size,
      sequence_length=module.sequence_length,
      num_classes=module.num_classes, generate=module.generate)


_register(listops, listops.ListOps, listops.ListOpsConfig)
_register(mqar, mqar.MQAR, mqar.MQARConfig)
_register(copying, copying.Copying, copying.CopyingConfig)
_register(order, order.Order, order.OrderConfig)


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
