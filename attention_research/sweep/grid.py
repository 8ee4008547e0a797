"""Sweep grids: lists of override dicts, built from five small helpers.

The grid style of big_vision's and long-range-arena's sweep configs (whose
runner was never published), written anew here. A grid is a list of dicts,
each dict one trial's overrides of the base config, keyed by field name
(dotted for nested fields: "task_options.num_kv_pairs"):

    product([sweep("num_heads", [1, 4, 8]), sweep("attention", ["dense", "local"])])
    -> 6 trials: every head count with every variant
    zipit([sweep("num_layers", [2, 4]), sweep("d_model", [128, 90])])
    -> 2 trials: (2, 128) and (4, 90)
    chainit([grid_a, grid_b])   -> grid_a's trials, then grid_b's
    fixed("total_steps", 500)   -> one trial setting one field

Each trial has a stable id (a hash of its overrides, independent of their
order and of the grid's) and a readable name built from the overrides.
"""

import hashlib
import inspect
import itertools
import json
import sys


def sweep(name, values):
  """One field over `values`: [{name: v} for v in values]."""
  _check_name(name)
  values = list(values)
  if not values:
    raise ValueError(f"sweep({name!r}, ...): `values` is empty; a sweep needs at least one")
  return [{name: v} for v in values]


def fixed(name, value):
  """One field held at one value: a one-trial grid, to combine with product."""
  _check_name(name)
  return [{name: value}]


def product(grids):
  """Every combination: the cartesian product of the grids, later ones varying fastest."""
  grids = [_check_grid(g, "product") for g in grids]
  return [_merge(combo, "product") for combo in itertools.product(*grids)]


def zipit(grids):
  """Trial i of each grid merged into one: the grids must have equal lengths."""
  grids = [_check_grid(g, "zipit") for g in grids]
  lengths = sorted({len(g) for g in grids})
  if len(lengths) > 1:
    raise ValueError(f"zipit: the grids must have the same number of trials, got lengths "
                     f"{[len(g) for g in grids]}")
  return [_merge(combo, "zipit") for combo in zip(*grids)]


def chainit(grids):
  """The grids one after another."""
  return [dict(t) for g in grids for t in _check_grid(g, "chainit")]


def of_config(module, config, arg=None):
  """The grid a sweep config file's module gives, for its base config.

  get_sweep(h) takes the grid helpers (this module); get_sweep(h, config)
  also reads the base config (its scale, say); get_sweep(h, config, arg)
  also reads the config argument string, "scale=cpu,seeds=3" (for what the
  base config has no field for, such as how many seeds).
  """
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{getattr(module, '__file__', module)} has no get_sweep(h): not a sweep "
                     f"config")
  args = (sys.modules[__name__], config, arg)
  return module.get_sweep(*args[:len(inspect.signature(module.get_sweep).parameters)])


def trial_id(overrides):
  """A stable 10-hex-digit id of a trial's overrides (order-independent)."""
  text = json.dumps(overrides, sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest()[:10]


def trial_name(overrides):
  """'field=value,...' in sorted field order; '(base)' for no overrides.

  A dict value (a whole task_options, say) shows as {…}: it would make the
  name as long as the dict, and the trial's id tells such trials apart.
  """
  if not overrides:
    return "(base)"
  return ",".join(f"{k}={_short(v)}" for k, v in sorted(overrides.items()))


def _short(value):
  if isinstance(value, dict):
    return "{…}"
  return f"{value:g}" if isinstance(value, float) else str(value)


def _check_name(name):
  if not isinstance(name, str) or not name or any(not p for p in name.split(".")):
    raise ValueError(f"a sweep field name must be a non-empty (dotted) string, got {name!r}")


def _check_grid(grid, where):
  if not isinstance(grid, (list, tuple)) or not all(isinstance(t, dict) for t in grid):
    raise ValueError(f"{where}: each grid must be a list of dicts (from sweep, fixed, product, "
                     f"zipit or chainit), got {grid!r:.200}")
  return grid


def _merge(dicts, where):
  merged = {}
  for d in dicts:
    clash = sorted(set(merged) & set(d))
    if clash:
      raise ValueError(f"{where}: field(s) {clash} are set by more than one grid")
    merged.update(d)
  return merged
