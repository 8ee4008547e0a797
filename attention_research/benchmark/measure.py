"""Measuring attention variants: time, compile time and memory against sequence length.

    setup = measure.BenchmarkSetup(variants=("dense", "local"), lengths=(1024, 2048),
                                   memory_budget_bytes=8 * measure.GIB)
    results = measure.run(setup)   # report.markdown(results) prints it

For each variant and length this measures the forward and the
forward+backward time (median over at least `repeats` calls and at least
`min_timing_seconds` of calls, after one warm-up call; compile time apart)
and the temporary memory of the compiled executable (XLA's
`memory_analysis().temp_size_in_bytes`). A variant's lengths are timed in
`rounds` interleaved rounds, each point getting its share of the calls in
every round and reporting the median of its round medians, so that a slow
spell of a shared machine falls on all of a variant's lengths alike instead
of on one, which would skew the ratios and slopes between them. The same
run times `jax.nn.dot_product_attention` as the baseline and a square matrix
multiply as the GFLOP/s ceiling of this machine (sampled before each round
of each variant, the median reported), so every number has a reference
measured beside it.

Each point is compiled before its inputs are allocated; one whose compiled
memory (temp + arguments + outputs) exceeds the memory budget is not run
(the inputs of the variant's shorter lengths, allocated beside it while the
rounds interleave them, count against the budget too), and once one of a
variant's points is slower than `max_seconds` its longer lengths are not run
either. The point's note says which and why.

A variant's options are the registry's defaults overridden by the setup's
(`attention.variant(name).resolved_options`); its own FLOPs are the
registry's cost (`flops_per_query`), dense's for the baseline.
"""

import dataclasses
import datetime
import os
import platform
import statistics
import time
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from attention_research import attention
from attention_research import tabulate

BASELINE = "jax.nn.dot_product_attention"
MIB, GIB = 2.0**20, 2.0**30
MAX_CALLS = 200  # per timed point, however short its calls


@dataclasses.dataclass(frozen=True)
class BenchmarkSetup:
  """What to measure and how; experiments/benchmark_attention.py builds it from its flags."""
  variants: tuple                  # registered names, in order (the baseline apart)
  lengths: tuple                   # increasing
  memory_budget_bytes: float
  baseline: bool = True
  batch: int = 1
  heads: int = 8
  kv_heads: int = 8
  head_dim: int = 64
  dtype: str = "float32"
  causal: bool = False
  repeats: int = 3
  min_timing_seconds: float = 0.0
  rounds: int = 1
  options: dict = dataclasses.field(default_factory=dict)  # variant -> overrides of its defaults
  max_seconds: float = 30.0
  matmul_size: int = 2048
  malloc: str = "default"          # the host allocator's setting, for the report

  @property
  def names(self) -> list:
    """Every row name, the baseline first."""
    return ([BASELINE] if self.baseline else []) + list(self.variants)


@dataclasses.dataclass
class Point:
  """One variant at one length; times in seconds, memory in bytes, None if not measured."""
  variant: str
  length: int
  flops: float       # dense attention's forward FLOPs at this shape
  own_flops: float   # the variant's own forward FLOPs (the registry's cost)
  fwd_s: Optional[float] = None
  fwd_bwd_s: Optional[float] = None
  compile_fwd_s: Optional[float] = None
  compile_fwd_bwd_s: Optional[float] = None
  temp_fwd_bytes: Optional[int] = None
  temp_fwd_bwd_bytes: Optional[int] = None
  note: str = ""


@dataclasses.dataclass
class Results:
  """What `run` measured, for report.py to write."""
  setup: BenchmarkSetup
  ceiling_gflops: float  # median of the samples taken through the run
  header: list   # lines describing the machine and the setup
  points: list   # Points, by variant then length


def default_memory_budget_bytes() -> float:
  """The device's memory limit if it reports one; else half the host's RAM."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return float(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2


# ----------------------------------------------------------------------------
# FLOPs.
# ----------------------------------------------------------------------------

def dense_equivalent_flops(batch, heads, q_len, k_len, head_dim, causal) -> float:
  """Forward FLOPs of dense attention: two matmuls of 2*Lq*Lk*D each per head."""
  flops = 4.0 * batch * heads * q_len * k_len * head_dim
  return flops / 2 if causal else flops


def registered(name) -> str:
  """The registered variant of a row: "blockwise@cudnn" is blockwise run by
  cuDNN (its `implementation` option), so one run can time each kernel."""
  return name.partition("@")[0]


def variant_options(name, s: BenchmarkSetup) -> dict:
  """Every option of row `name`: its variant's defaults, then the setup's."""
  return attention.variant(registered(name)).resolved_options(s.options.get(name))


def own_flops(name, s: BenchmarkSetup, length) -> float:
  """Forward FLOPs of `name`'s own computation at `length`, from the registry's
  cost; the baseline computes dense attention, so it costs dense's."""
  variant = "dense" if name == BASELINE else registered(name)
  options = {} if name == BASELINE else s.options.get(name)
  return s.batch * length * attention.variant(variant).flops_per_query(
      length, heads=s.heads, kv_heads=s.kv_heads, head_dim=s.head_dim, causal=s.causal,
      options=options)


# ----------------------------------------------------------------------------
# Measuring: compile, check the memory, time.
# ----------------------------------------------------------------------------

def attention_fn(name, s: BenchmarkSetup):
  """(q, k, v) -> out for a variant (or the baseline) with its benchmark options."""
  if name == BASELINE:
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=s.causal)
  fn, options = attention.get(registered(name)), variant_options(name, s)
  return lambda q, k, v: fn(q, k, v, causal=s.causal, **options)


def forward_backward(forward):
  """(q, k, v, cotangent) -> gradients of sum(out * cotangent): a real backward pass."""
  def loss(q, k, v, cotangent):
    return jnp.sum(forward(q, k, v).astype(jnp.float32) * cotangent.astype(jnp.float32))
  return jax.grad(loss, argnums=(0, 1, 2))


def input_specs(s: BenchmarkSetup, length):
  """ShapeDtypeStructs of query, key, value and the output cotangent."""
  q = jax.ShapeDtypeStruct((s.batch, length, s.heads, s.head_dim), jnp.dtype(s.dtype))
  kv = jax.ShapeDtypeStruct((s.batch, length, s.kv_heads, s.head_dim), jnp.dtype(s.dtype))
  return q, kv, kv, q


def random_inputs(specs, seed=0):
  keys = jax.random.split(jax.random.key(seed), len(specs))
  return tuple(jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, specs))


def compile_timed(fn, specs):
  """(executable, compile seconds, temp bytes, total bytes); lowering allocates nothing."""
  start = time.perf_counter()
  executable = jax.jit(fn).lower(*specs).compile()
  seconds = time.perf_counter() - start
  memory = executable.memory_analysis()
  if memory is None:
    return executable, seconds, None, None
  total = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
  return executable, seconds, memory.temp_size_in_bytes, total


def call_seconds(executable, args, calls, min_seconds=0.0, max_calls=MAX_CALLS) -> list:
  """Wall times of at least `calls` calls and, up to max_calls, of calls until
  they add up to `min_seconds`."""
  times = []
  while len(times) < calls or (sum(times) < min_seconds and len(times) < max_calls):
    start = time.perf_counter()
    jax.block_until_ready(executable(*args))
    times.append(time.perf_counter() - start)
  return times


def median_seconds(executable, args, repeats, min_seconds=0.0) -> float:
  """Median wall time after one warm-up call, over at least `repeats` calls
  and, up to MAX_CALLS, until the calls add up to `min_seconds`."""
  jax.block_until_ready(executable(*args))
  return statistics.median(call_seconds(executable, args, repeats, min_seconds))


def compile_point(name, s: BenchmarkSetup, length, held_bytes=0):
  """Compiles fwd and fwd+bwd at `length`: the Point with their compile times
  and memory, and {mode key: (executable, inputs)} of the modes within budget,
  the budget less `held_bytes` already allocated to other points' inputs."""
  point = Point(name, length,
                dense_equivalent_flops(s.batch, s.heads, length, length, s.head_dim, s.causal),
                own_flops(name, s, length))
  forward = attention_fn(name, s)
  specs = input_specs(s, length)
  modes = {"fwd": (forward, specs[:3]), "fwd+bwd": (forward_backward(forward), specs)}
  too_big, inputs, runs = {}, None, {}
  for mode, (fn, mode_specs) in modes.items():
    key = mode.replace("+", "_")
    try:
      executable, seconds, temp, total = compile_timed(fn, mode_specs)
    except jax.errors.JaxRuntimeError as e:
      # On GPUs XLA's autotuner runs candidate kernels on real buffers while
      # compiling, so a program far over the device's memory fails to compile
      # rather than reporting its size.
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      too_big[mode] = None
      continue
    setattr(point, f"compile_{key}_s", seconds)
    setattr(point, f"temp_{key}_bytes", temp)
    if total is not None and total + held_bytes > s.memory_budget_bytes:
      too_big[mode] = total + held_bytes
      continue
    inputs = inputs or random_inputs(specs)
    runs[key] = (executable, inputs[:len(mode_specs)])
  point.note = memory_note(too_big, s.memory_budget_bytes, len(modes))
  return point, runs


def memory_note(too_big, budget, num_modes) -> str:
  """'skipped: needs X GiB > budget Y GiB', prefixed by the mode unless all were skipped."""
  notes = ["skipped: out of device memory while compiling" if need is None else
           f"skipped: needs {need / GIB:.3g} GiB > budget {budget / GIB:.3g} GiB"
           for need in too_big.values()]
  if len(too_big) == num_modes:
    return notes[-1]  # the largest need, fwd+bwd's
  return "; ".join(f"{mode} {note}" for mode, note in zip(too_big, notes))


def measure_variant(name, s: BenchmarkSetup, sample_ceiling) -> tuple:
  """Every length of one variant, timed in s.rounds interleaved rounds.

  A point's time is the median of its rounds' medians: pooling the calls
  instead would let a fast round, which fits more calls into its share of
  min_timing_seconds, outvote a slow one on short points only. Returns
  (points, ceiling samples): sample_ceiling() is called before each round.
  Once a point is slower than max_seconds in the first round, the
  longer lengths are compiled (for their memory) but not timed.
  """
  compiled, held = [], 0
  for length in s.lengths:  # each point's inputs stay allocated while the rounds run
    compiled.append(compile_point(name, s, length, held))
    inputs = [args for _, args in compiled[-1][1].values()]  # fwd's are a prefix of fwd+bwd's
    held += sum(x.nbytes for x in max(inputs, key=len, default=()))
  times = [{key: [] for key in runs} for _, runs in compiled]  # per-round medians
  calls, seconds = -(-s.repeats // s.rounds), s.min_timing_seconds / s.rounds
  timed, samples = len(compiled), []  # the first `timed` lengths are timed
  for round_index in range(s.rounds):
    samples.append(sample_ceiling())
    for i, ((_, runs), point_times) in enumerate(zip(compiled[:timed], times)):
      for key, (executable, args) in runs.items():
        if round_index == 0:
          jax.block_until_ready(executable(*args))  # warm-up
        point_times[key].append(statistics.median(call_seconds(
            executable, args, calls, seconds, max(1, MAX_CALLS // s.rounds))))
      slowest = max((t[0] for t in point_times.values()), default=0.0)
      if round_index == 0 and slowest > s.max_seconds:
        timed = i + 1
        break
  points = []
  for i, ((point, _), point_times) in enumerate(zip(compiled, times)):
    if i >= timed:
      point.note = "skipped: slower than --max_seconds at smaller L"
    for key, t in point_times.items():
      if t:
        setattr(point, f"{key}_s", statistics.median(t))
    logging.info("%s L=%d: fwd %s ms, fwd+bwd %s ms, temp %s / %s MiB %s", name, point.length,
                 *(tabulate.format_number(t and t * 1e3) for t in (point.fwd_s, point.fwd_bwd_s)),
                 *(tabulate.format_number(b and b / MIB) for b in (point.temp_fwd_bytes,
                                                                   point.temp_fwd_bwd_bytes)),
                 point.note)
    points.append(point)
  return points, samples


def matmul_gflops(n, dtype, repeats, min_seconds=0.0) -> float:
  """GFLOP/s of an n x n x n matmul (2 n^3 FLOPs): median time of at least
  max(repeats, 5) calls and min_seconds of calls."""
  a, b = random_inputs([jax.ShapeDtypeStruct((n, n), jnp.dtype(dtype))] * 2, seed=1)
  executable = jax.jit(jnp.matmul).lower(a, b).compile()
  seconds = median_seconds(executable, (a, b), max(repeats, 5), min_seconds)
  return 2.0 * n**3 / seconds / 1e9


def check_variants_trace(s: BenchmarkSetup):
  """Traces every variant once (no compile) so a bad option fails before the long run."""
  for name in s.names:
    jax.eval_shape(attention_fn(name, s), *input_specs(s, s.lengths[0])[:3])


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------

def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def header_lines(s: BenchmarkSetup, ceiling_samples, ceiling_gflops) -> list:
  """The machine, the setup and the ceiling, as the report's header lines;
  taken when the run ends, so the time stamp is the run's."""
  device = jax.devices()[0]
  options = "; ".join(f"{name} {variant_options(name, s)}" for name in s.variants)
  return [
      f"machine: {cpu_model()}, {os.cpu_count()} cores; device: {device.platform} "
      f"({device.device_kind}) x{jax.device_count()}",
      f"jax {jax.__version__}; {datetime.datetime.now().isoformat(timespec='seconds')}",
      f"shape: B={s.batch} H={s.heads} Hkv={s.kv_heads} D={s.head_dim} {s.dtype}, "
      f"causal={s.causal}; times: at least {s.repeats} calls and "
      f"{s.min_timing_seconds:g} s of calls a point, after a warm-up, in {s.rounds} interleaved "
      f"round{'s' if s.rounds > 1 else ''} over the lengths, "
      f"{'the median of the round medians' if s.rounds > 1 else 'their median'}",
      f"matmul ceiling: {ceiling_gflops:.1f} GFLOP/s ({s.dtype} "
      f"{s.matmul_size}^3; median of {len(ceiling_samples)} samples, one before each round of each variant: "
      f"{min(ceiling_samples):.0f} to {max(ceiling_samples):.0f})",
      f"memory budget: {s.memory_budget_bytes / GIB:.3g} GiB; max seconds: {s.max_seconds}",
      f"host malloc: {s.malloc}",
      f"options: {options}",
  ]


def run(s: BenchmarkSetup, on_variant=None) -> Results:
  """Measures every variant of `s` (the baseline first) at every length.

  on_variant: None, or a function called with the Results so far after each
  variant but the last, so that a run stopped part-way (a time limit on a lent
  accelerator) has already written the rows it finished.
  """
  check_variants_trace(s)

  # A shared machine's speed drifts over a long run, so the ceiling is
  # sampled before each round of each variant rather than once at the start.
  def sample_ceiling():
    gflops = matmul_gflops(s.matmul_size, s.dtype, s.repeats, s.min_timing_seconds)
    logging.info("matmul ceiling sample: %.1f GFLOP/s", gflops)
    return gflops

  samples, points = [], []
  for done, name in enumerate(s.names, start=1):
    variant_points, variant_samples = measure_variant(name, s, sample_ceiling)
    points += variant_points
    samples += variant_samples
    if on_variant is not None and done < len(s.names):
      on_variant(_results(s, samples, points, done))
  return _results(s, samples, points, len(s.names))


def _results(s, samples, points, done):
  """The Results of the first `done` variants, as if the setup had named only those;
  until every variant is measured, a header line names the ones still missing."""
  measured = s.names[:done]
  part = dataclasses.replace(s, variants=tuple(n for n in s.variants if n in measured))
  ceiling = float(np.median(samples))
  header = header_lines(part, samples, ceiling)
  if done < len(s.names):
    header.append(f"partial: {done} of {len(s.names)} variants measured when this was "
                  f"written; not yet: {', '.join(s.names[done:])}")
  return Results(part, ceiling, header, list(points))
