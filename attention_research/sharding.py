"""The mesh and the sharding rules: how the train state and the batch lie over the devices.

    shape = sharding.mesh_shape(config.mesh, len(jax.devices()))   # {"data": 8, ...}
    mesh = sharding.make_mesh(shape)
    state_shardings = sharding.state_shardings(abstract_state, mesh)
    batch = sharding.batch_sharding(mesh)

Four named axes, each sized by `config.mesh` (-1: the devices left over):
  data     the batch is split; parameters are whole on every device.
  fsdp     the batch is split too, and so are the parameters and the optimizer
           state (ZeRO-3 / FSDP: XLA gathers a weight where it is used).
  tensor   attention heads and the MLP's hidden units are split (Megatron).
  context  the sequence is split: the tokens and activations, and attention
           itself runs split (ring or all-gather, attention/context.py).

Each parameter gets logical axis names from its path (PARAM_AXES, a table
in place of flax's `with_logical_partitioning`: the modules stay plain, and
the names live in one place); RULES maps logical names to mesh axes, as
MaxText's `logical_axis_rules` do. The optimizer's moments have their
parameter's path as a suffix, so they follow it. A dimension that its mesh
axis does not divide stays whole (replicated): LayerNorm vectors under a
large fsdp, and grouped-query attention's key/value heads when there are
fewer of them than tensor shards (each device then holds every kv head).
"""

import math
import os
import re

import jax
import numpy as np

AXES = ("data", "fsdp", "tensor", "context")

# Logical axis -> mesh axes (None: not split).
RULES = {
    "batch": ("data", "fsdp"),
    "length": "context",
    "embed": "fsdp",
    "vocab": None,
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "classes": None,
    "positions": None,
    # Activations (models/transformer.py constrains the residual stream and the
    # MLP's hidden units): the batch as above, the sequence over context, the
    # hidden units over tensor; d_model whole (fsdp already splits the batch).
    "activation_batch": ("data", "fsdp"),
    "activation_length": "context",
    "activation_embed": None,
    "activation_mlp": "tensor",
}

# (regex on the '/'-joined path of a parameter, its logical axes). The first
# match wins; a parameter that matches none is an error (a new layer must say
# how it shards).
PARAM_AXES = (
    (r"(^|/)embed/embedding$", ("vocab", "embed")),
    (r"(^|/)positions/table$", ("positions", "embed")),
    (r"(^|/)query/kernel$", ("embed", "heads", "head_dim")),
    (r"(^|/)query/bias$", ("heads", "head_dim")),
    (r"(^|/)(key|value)/kernel$", ("embed", "kv_heads", "head_dim")),
    (r"(^|/)(key|value)/bias$", ("kv_heads", "head_dim")),
    (r"(^|/)out/kernel$", ("heads", "head_dim", "embed")),
    (r"(^|/)mlp_in/kernel$", ("embed", "mlp")),
    (r"(^|/)mlp_in/bias$", ("mlp",)),
    (r"(^|/)mlp_out/kernel$", ("mlp", "embed")),
    (r"(^|/)head_hidden/kernel$", ("embed", "mlp")),
    (r"(^|/)head_hidden/bias$", ("mlp",)),
    (r"(^|/)head/kernel$", ("embed", "classes")),
    (r"(^|/)head/bias$", ("classes",)),
    (r"(^|/)logits/kernel$", ("embed", "vocab")),
    (r"(^|/)logits/bias$", ("vocab",)),
    (r"(^|/)(out|mlp_out)/bias$", ("embed",)),
    (r"(^|/)(scale|bias)$", ("embed",)),   # LayerNorm
)


def mesh_shape(mesh_config, num_devices):
  """{axis: size} for every axis of AXES, with -1 resolved; ValueError naming the axis."""
  sizes = dict(mesh_config)
  unknown = sorted(set(sizes) - set(AXES))
  if unknown:
    raise ValueError(f"config.mesh: unknown axes {unknown}; allowed: {list(AXES)}")
  sizes = {axis: sizes.get(axis, 1) for axis in AXES}
  for axis, size in sizes.items():
    if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
      raise ValueError(f"config.mesh.{axis}={size!r}: a mesh axis size is a positive integer "
                       f"or -1 (the devices left over)")
  free = [axis for axis, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh: {len(free)} axes are -1 ({free}); at most one axis may "
                     f"take the devices left over")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"config.mesh: the fixed axes {_spell(sizes)} take {fixed} devices, "
                       f"which does not divide the {num_devices} devices; mesh.{free[0]}=-1 "
                       f"cannot take the rest")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"config.mesh: {_spell(sizes)} is {math.prod(sizes.values())} devices, "
                     f"but there are {num_devices}; the sizes must multiply to the device "
                     f"count (set one axis to -1 to take the rest)")
  return sizes


def _spell(sizes):
  return " x ".join(f"{axis} {size}" for axis, size in sizes.items())


def check_divides(shape, *, batch_size, num_heads, max_len):
  """ValueError when a mesh axis does not divide what it splits."""
  batch_shards = shape["data"] * shape["fsdp"]
  if batch_size % batch_shards:
    raise ValueError(f"config.batch_size={batch_size} must be divisible by mesh data x fsdp "
                     f"= {shape['data']} x {shape['fsdp']} = {batch_shards} (the batch is "
                     f"split over both); allowed: multiples of {batch_shards}")
  if num_heads % shape["tensor"]:
    raise ValueError(f"config.mesh.tensor={shape['tensor']} must divide config.num_heads="
                     f"{num_heads} (the tensor axis splits the attention heads)")
  if max_len % shape["context"]:
    raise ValueError(f"config.mesh.context={shape['context']} must divide config.max_len="
                     f"{max_len} (the context axis splits the sequence)")


def make_mesh(shape, devices=None):
  """A jax Mesh with the axes of AXES in that order, sized by `shape`.

  Auto axis types: jit and XLA place the collectives (shard_map users say
  where explicitly).
  """
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh(tuple(shape[a] for a in AXES), AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices)


def describe(mesh):
  return " x ".join(f"{axis} {size}" for axis, size in mesh.shape.items())


def _path_name(path):
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def logical_axes(path_name, ndim):
  """The logical axes of the parameter (or optimizer moment) at `path_name`."""
  if ndim == 0:
    return ()
  for pattern, axes in PARAM_AXES:
    if re.search(pattern, path_name) and len(axes) == ndim:
      return axes
  raise ValueError(f"sharding: no rule in PARAM_AXES for the parameter {path_name!r} of rank "
                   f"{ndim}; add one (its logical axes) to attention_research/sharding.py")


def spec(axes, shape, mesh):
  """The PartitionSpec of logical `axes` for an array of `shape` on `mesh`: each dimension
  split over RULES' mesh axes of size > 1 that divide it; whole otherwise."""
  entries = []
  for name, size in zip(axes, shape):
    mesh_axes = RULES.get(name)
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
    mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1)
    split = math.prod(mesh.shape[a] for a in mesh_axes)
    if not mesh_axes or size % split:
      entries.append(None)
    else:
      entries.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return jax.sharding.PartitionSpec(*entries)


def state_shardings(abstract_state, mesh):
  """A NamedSharding for every leaf of the train state (params, opt_state, step)."""
  def leaf_sharding(path, leaf):
    name = _path_name(path)
    is_param = name.startswith("params/") or "/mu/" in name or "/nu/" in name
    axes = logical_axes(name, leaf.ndim) if is_param else (None,) * leaf.ndim
    return jax.sharding.NamedSharding(mesh, spec(axes, leaf.shape, mesh))
  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)


def batch_sharding(mesh):
  """Batches [B, ...] split over data x fsdp, whole along the other axes."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))


def constrain(x, axes, mesh):
  """x laid out over `mesh` by its logical `axes` (inside jit); x itself without a mesh."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(
      x, jax.sharding.NamedSharding(mesh, spec(axes, x.shape, mesh)))


def constrain_batch(batch, mesh):
  """Inside a jitted step: the batch's [B, L, ...] arrays split along the sequence over
  `context` as well (each device keeps its part of the rows it holds, no communication),
  so activations are split from the embedding on; 1-D arrays keep the batch split."""
  if mesh.shape["context"] == 1:
    return batch
  rows = ("data", "fsdp")
  def constrain(x):
    split = x.ndim > 1 and x.shape[1] % mesh.shape["context"] == 0
    spec = jax.sharding.PartitionSpec(rows, "context") if split else jax.sharding.PartitionSpec(rows)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))
  return {k: constrain(v) for k, v in batch.items()}


def batch_loading(sharding, global_batch_size):
  """(index, count): this process loads part `index` of `count` equal parts of each global
  batch, the rows its devices hold. Processes whose devices hold the same rows (a batch
  shard spread over processes by the tensor or context axis) load the same part."""
  indices = sharding.addressable_devices_indices_map((global_batch_size,)).values()
  rows = sorted({(s[0].start or 0, s[0].stop or global_batch_size) for s in indices})
  start, stop = rows[0][0], rows[-1][1]
  if any(a[1] != b[0] for a, b in zip(rows, rows[1:])) or global_batch_size % (stop - start):
    raise ValueError(f"config.mesh: this process's devices hold rows {rows} of the batch, not "
                     f"one contiguous equal part; order the mesh so that each process holds "
                     f"whole batch shards")
  return start // (stop - start), global_batch_size // (stop - start)


def per_device_bytes(abstract_state, shardings):
  """Bytes of the train state on the device that holds most of it."""
  total = {}
  for leaf, sharding in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(shardings)):
    shard = sharding.shard_shape(leaf.shape)
    nbytes = int(np.prod(shard)) * np.dtype(leaf.dtype).itemsize
    for device in sharding.device_set:
      total[device] = total.get(device, 0) + nbytes
  return max(total.values())


def device_memory_bytes(device):
  """What one device may allocate: the backend's figure (TPU, GPU), else, on CPU, the
  host's physical memory shared by its local devices; None where neither is known."""
  stats = device.memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  if device.platform == "cpu":
    try:
      physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
      return None
    return physical // max(jax.local_device_count(), 1)
  return None


def step_bytes(memory_analysis):
  """Peak bytes of a compiled step on one device: arguments, outputs not aliased to them
  (donated buffers are reused), temporaries."""
  get = lambda name: getattr(memory_analysis, name, 0) or 0
  return (get("argument_size_in_bytes") + get("output_size_in_bytes")
          - get("alias_size_in_bytes") + get("temp_size_in_bytes"))
