"""What splitting over devices buys: per-device memory of context-parallel attention and of
the train state, from XLA's compiled memory analysis (no timing claims on simulated devices).

    point = scale.context_point("blockwise", "ring", devices=4, length=4096, shapes=Shapes())
    point = scale.context_point("blockwise", "ring+overlap", 4, 4096, Shapes())
    longest = scale.longest_length("blockwise", "ring", 4, budget_bytes=2**30, shapes=Shapes())
    rows = scale.state_bytes(config, [dict(data=8), dict(fsdp=8)])

A compiled SPMD program is one device's program, so its memory analysis is per
device: `temp` is what forward+backward allocates beyond its arguments and
outputs, `peak` the three together. Simulated CPU devices share the host's
cores, so their times are reported but say nothing about speed-ups.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attention_research import attention
from attention_research import data
from attention_research import models
from attention_research import sharding
from attention_research import train


@dataclasses.dataclass(frozen=True)
class Shapes:
  batch: int = 1
  heads: int = 8
  head_dim: int = 64
  causal: bool = True
  options: tuple = ()      # (variant, {option: value}) pairs


def _mesh(devices):
  shape = dict(data=1, fsdp=1, tensor=1, context=devices)
  return sharding.make_mesh(shape, jax.devices()[:devices])


def _compiled(name, strategy, devices, length, shapes):
  """The jitted forward+backward of `name` split `devices` ways, compiled. A strategy
  "ring+overlap" is the ring with `overlap=True`, "ring+serial" with False."""
  mesh = _mesh(devices)
  strategy, _, schedule = strategy.partition("+")
  if schedule not in ("", "overlap", "serial"):
    raise ValueError(f"strategy {strategy}+{schedule}: the schedules are +overlap and +serial")
  overlap = {"": None, "overlap": True, "serial": False}[schedule]
  fn = attention.context_parallel(name, mesh, strategy, overlap=overlap)
  options = dict(dict(shapes.options).get(name, {}))

  def loss(q, k, v):
    return jnp.sum(fn(q, k, v, causal=shapes.causal, **options))

  split = NamedSharding(mesh, P(None, "context", None, None))
  spec = jax.ShapeDtypeStruct((shapes.batch, length, shapes.heads, shapes.head_dim),
                              jnp.float32, sharding=split)
  step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), out_shardings=(split,) * 3)
  return step.lower(spec, spec, spec).compile(), split


def _memory(compiled):
  m = compiled.memory_analysis()
  temp = int(m.temp_size_in_bytes)
  return temp, temp + int(m.argument_size_in_bytes) + int(m.output_size_in_bytes)


def context_point(name, strategy, devices, length, shapes, calls=1):
  """{temp, peak} bytes a device and the median seconds of `calls` forward+backward calls
  (calls=0: compiled only, seconds NaN, for lengths too slow to run on simulated devices)."""
  start = time.perf_counter()
  compiled, split = _compiled(name, strategy, devices, length, shapes)
  compile_s = time.perf_counter() - start
  temp, peak = _memory(compiled)
  if calls == 0:
    return dict(temp=temp, peak=peak, seconds=float("nan"), compile_s=compile_s)
  rng = np.random.default_rng(0)
  args = [jax.device_put(rng.standard_normal(
      (shapes.batch, length, shapes.heads, shapes.head_dim)).astype(np.float32), split)
          for _ in range(3)]
  jax.block_until_ready(compiled(*args))  # warm-up
  seconds = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    seconds.append(time.perf_counter() - start)
  return dict(temp=temp, peak=peak, seconds=float(np.median(seconds)), compile_s=compile_s)


def longest_length(name, strategy, devices, budget_bytes, shapes, start=1024, limit=1 << 22,
                   resolution=8):
  """The longest L whose forward+backward peak per device fits `budget_bytes`: doubling from
  `start`, then bisecting the last doubling to 1/`resolution` of it (in multiples of
  devices^2, so the shards stripe evenly); compiles only. None if `start` does not fit."""
  step = devices * devices
  fits = lambda length: _memory(_compiled(name, strategy, devices, length, shapes)[0])[1] \
      <= budget_bytes
  if not fits(start):
    return None
  low = start
  while low * 2 <= limit and fits(low * 2):
    low *= 2
  if low * 2 > limit:
    return low
  high = low * 2
  grain = max(step, (high - low) // resolution // step * step)
  while high - low > grain:
    mid = (low + high) // 2 // step * step
    if fits(mid):
      low = mid
    else:
      high = mid
  return low


def state_bytes(config, meshes):
  """[(mesh shape, parameter + optimizer bytes on the fullest device)] for `config`'s model,
  from the shapes alone (nothing is allocated)."""
  settings = models.resolve(config)
  options = config.task_options.to_dict()
  vocab_size = data.vocab_size(config.task, options)
  num_classes = data.num_classes(config.task, options)
  model = models.build(settings, vocab_size=vocab_size, num_classes=num_classes)
  optimizer = train.make_optimizer(config, train.learning_rate_schedule(config))
  tokens = jnp.zeros((config.batch_size, config.max_len), jnp.int32)

  abstract = jax.eval_shape(lambda: train.new_state(model, optimizer, jax.random.key(0), tokens,
                                                    tokens > 0))
  rows = []
  for mesh_config in meshes:
    shape = sharding.mesh_shape(dict(mesh_config), len(jax.devices()))
    mesh = sharding.make_mesh(shape)
    rows.append((shape, sharding.per_device_bytes(abstract, sharding.state_shardings(abstract,
                                                                                     mesh))))
  return rows
