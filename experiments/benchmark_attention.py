"""Benchmark attention variants: time and memory against sequence length.

For each variant and length this measures the forward and the
forward+backward time (median over at least --repeats calls and at least
--min_timing_seconds of calls, after one warm-up call; compile time reported
apart) and the temporary memory of the compiled executable
(XLA's `memory_analysis().temp_size_in_bytes`). A variant's lengths are timed
in --rounds interleaved rounds, each point getting its share of the calls in
every round and reporting the median of its round medians, so that a slow
spell of a shared machine falls on all of a variant's lengths alike instead
of on one, which would skew the ratios and slopes between them. The same
run times `jax.nn.dot_product_attention` as the baseline and a square matrix
multiply as the GFLOP/s ceiling of this machine (sampled before each round
of each variant, the median reported), so every number has a reference
measured beside it. It prints Markdown tables (per point, then each
variant's fitted log-log slope) and, with --out_dir, writes benchmark.md,
benchmark.csv and benchmark.png (fwd+bwd time and temp memory against L,
log-log, each variant's slope in the legend).

    python -m experiments.benchmark_attention \
        --variants=dense,blockwise,local,linear,performer \
        --lengths=1024,2048,4096,8192,16384 --out_dir=/tmp/bench

It tests DESIGN.md's first claim: a slope near 2 is O(L^2), near 1 is O(L).
Each point is compiled before its inputs are allocated; one whose compiled
memory (temp + arguments + outputs) exceeds --memory_budget_gb is not run
(the inputs of the variant's shorter lengths, allocated beside it while the
rounds interleave them, count against the budget too),
and once one of a variant's points is slower than --max_seconds its longer
lengths are not run either. The table's note says which and why.
"""

import ast
import csv
import dataclasses
import datetime
import math
import os
import platform
import statistics
import time
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from attention_research import attention
from attention_research import host_malloc

BASELINE = "jax.nn.dot_product_attention"
# Benchmark settings that differ from the registry defaults.
BENCHMARK_DEFAULTS = {"local": {"window": 256}}  # the target window
MIB, GIB = 2.0**20, 2.0**30
MAX_CALLS = 200  # per timed point, however short its calls

flags.DEFINE_list("variants", None,
                  f"Registered attention variants (default: all of {attention.names()}). "
                  f"`baseline` names {BASELINE}, which is always included unless --nobaseline.")
flags.DEFINE_bool("baseline", True, f"Also time {BASELINE}, the reference for the speedups.")
flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192", "16384"],
                  "Sequence lengths L (query and key), run in increasing order.")
flags.DEFINE_integer("batch", 1, "Batch size B.")
flags.DEFINE_integer("heads", 8, "Query heads H.")
flags.DEFINE_integer("kv_heads", None, "Key/value heads (default: --heads); must divide --heads.")
flags.DEFINE_integer("head_dim", 64, "Head dimension D.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Input dtype (and the matmul's).")
flags.DEFINE_bool("causal", False, "Causal attention.")
flags.DEFINE_integer("repeats", 3, "Fewest timed calls per point after one warm-up (see "
                     "--min_timing_seconds); the median is reported.")
flags.DEFINE_float("min_timing_seconds", 0.3,
                   "Keep timing a point past --repeats calls until this much time is spent (at "
                   f"most {MAX_CALLS} calls), so a point of a few ms gets a stable median on a "
                   "noisy machine.")
flags.DEFINE_integer("rounds", 3,
                     "Time each variant's lengths in this many interleaved rounds (every point "
                     "gets 1/rounds of --repeats and --min_timing_seconds in each); a point's "
                     "time is the median of its rounds' medians.")
flags.DEFINE_multi_string("option", [],
                          "variant.option=value, repeatable, e.g. --option=local.window=512; "
                          "the value is a Python literal (a bare word is a string). "
                          f"Benchmark defaults: {BENCHMARK_DEFAULTS}.")
flags.DEFINE_float("memory_budget_gb", None,
                   "Skip a point whose compiled executable needs more memory than this, in GiB "
                   "(default: half the host's physical memory on CPU, the device's limit otherwise).")
flags.DEFINE_float("max_seconds", 30.0,
                   "Once a variant's fwd+bwd takes longer than this, skip its longer lengths.")
flags.DEFINE_integer("matmul_size", 2048, "n of the n x n x n matmul that sets the GFLOP/s ceiling.")
flags.DEFINE_bool("keep_freed_memory", False,
                  "Before jax starts, make glibc's malloc keep freed memory for reuse (see "
                  "attention_research/host_malloc.py). By default every call page-faults its "
                  "buffers of 32 MiB and more afresh while smaller ones are reused: a real cost "
                  "on CPU, which falls on long sequences and on whatever materialises large "
                  "arrays. With the flag, times are the computation's alone.")
flags.DEFINE_string("out_dir", None, "Write benchmark.{md,csv,png} here (default: only print).")

FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------
# Settings: flags, options and their validation (before anything compiles).
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
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
  options: dict = dataclasses.field(default_factory=dict)  # variant -> benchmark options
  max_seconds: float = 30.0
  matmul_size: int = 2048
  malloc: str = "default"          # the host allocator's setting, for the report

  @property
  def names(self) -> list:
    """Every row name, the baseline first."""
    return ([BASELINE] if self.baseline else []) + list(self.variants)


def parse_option_value(text):
  """A Python literal; a bare word (relu) is a string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if text.isidentifier():
      return text
    raise


def parse_options(strings) -> dict:
  """["local.window=256", ...] -> {"local": {"window": 256}}, checked against the registry."""
  options = {}
  for string in strings:
    try:
      name_option, value = string.split("=", 1)
      name, option = name_option.rsplit(".", 1)
    except ValueError:
      raise ValueError(f"--option={string!r}: expected variant.option=value, "
                       f"e.g. local.window=256") from None
    try:
      allowed = attention.variant(name).options  # the registry's error names the variants
      if option not in allowed:
        raise ValueError(f"attention {name!r} has no option {option!r}; it takes {sorted(allowed)}")
      options.setdefault(name, {})[option] = parse_option_value(value)
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"--option={string!r}: {e}") from None
  return options


def benchmark_options(variants, overrides) -> dict:
  """Per-variant options: BENCHMARK_DEFAULTS, then the --option overrides."""
  unused = sorted(set(overrides) - set(variants))
  if unused:
    raise ValueError(f"--option sets options of {unused}, which are not in --variants {list(variants)}")
  return {name: {**BENCHMARK_DEFAULTS.get(name, {}), **overrides.get(name, {})} for name in variants}


def parse_variants(names, baseline_flag):
  """--variants -> (registered names, whether to time the baseline)."""
  names = attention.names() if names is None else names
  baseline_named = any(n in ("baseline", BASELINE) for n in names)
  if baseline_named and not baseline_flag:
    raise ValueError("--variants names the baseline but --nobaseline drops it")
  variants = [n for n in dict.fromkeys(names) if n not in ("baseline", BASELINE)]
  for name in variants:
    attention.variant(name)  # ValueError naming the registered variants
  if not variants and not baseline_flag:
    raise ValueError("--variants is empty and --nobaseline: nothing to benchmark")
  return tuple(variants), baseline_flag


def parse_lengths(strings) -> tuple:
  try:
    lengths = sorted({int(s) for s in strings})
  except ValueError:
    raise ValueError(f"--lengths must be positive integers, got {strings}") from None
  if not lengths or lengths[0] < 1:
    raise ValueError(f"--lengths must be positive integers, got {strings}")
  return tuple(lengths)


def default_memory_budget_bytes() -> float:
  """The device's memory limit if it reports one; else half the host's RAM."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return float(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2


def settings_from_flags(f) -> Settings:
  """Settings from parsed absl flags; a bad flag is an app.UsageError naming it."""
  try:
    variants, baseline = parse_variants(f.variants, f.baseline)
    kv_heads = f.heads if f.kv_heads is None else f.kv_heads
    for name in ("batch", "heads", "head_dim", "repeats", "rounds", "matmul_size"):
      if getattr(f, name) < 1:
        raise ValueError(f"--{name} must be >= 1, got {getattr(f, name)}")
    if f.min_timing_seconds < 0:
      raise ValueError(f"--min_timing_seconds must be >= 0, got {f.min_timing_seconds}")
    if kv_heads < 1 or f.heads % kv_heads:
      raise ValueError(f"--kv_heads ({kv_heads}) must divide --heads ({f.heads})")
    budget = default_memory_budget_bytes() if f.memory_budget_gb is None else f.memory_budget_gb * GIB
    return Settings(
        variants=variants, lengths=parse_lengths(f.lengths), memory_budget_bytes=budget,
        baseline=baseline, batch=f.batch, heads=f.heads, kv_heads=kv_heads, head_dim=f.head_dim,
        dtype=f.dtype, causal=f.causal, repeats=f.repeats, min_timing_seconds=f.min_timing_seconds,
        rounds=f.rounds, options=benchmark_options(variants, parse_options(f.option)),
        max_seconds=f.max_seconds, matmul_size=f.matmul_size)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


# ----------------------------------------------------------------------------
# Pure arithmetic the tables use.
# ----------------------------------------------------------------------------

def dense_equivalent_flops(batch, heads, q_len, k_len, head_dim, causal) -> float:
  """Forward FLOPs of dense attention: two matmuls of 2*Lq*Lk*D each per head."""
  flops = 4.0 * batch * heads * q_len * k_len * head_dim
  return flops / 2 if causal else flops


def fit_slope(lengths, values) -> float:
  """Least-squares slope of log(value) on log(L); NaN with under two usable points."""
  pairs = [(x, y) for x, y in zip(lengths, values)
           if y is not None and np.isfinite(y) and y > 0]
  x = np.log([p[0] for p in pairs])
  y = np.log([p[1] for p in pairs])
  if len(set(x)) < 2:
    return math.nan
  if len(set(y)) == 1:
    return 0.0  # constant memory: exactly flat (the mean of equal logs can round)
  x_centered = x - x.mean()
  return float(np.sum(x_centered * (y - y.mean())) / np.sum(x_centered**2))


def format_number(value) -> str:
  """Three or so significant digits, '-' for a missing value."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  if isinstance(value, str) or isinstance(value, (int, np.integer)):
    return str(value)
  magnitude = abs(value)
  if magnitude >= 100:
    return f"{value:.0f}"
  if magnitude >= 10:
    return f"{value:.1f}"
  if magnitude >= 1:
    return f"{value:.2f}"
  return f"{value:.3g}"


def markdown_table(headers, rows) -> str:
  """A Markdown table; numbers right-aligned, text left-aligned."""
  cells = [[format_number(v) for v in row] for row in rows]
  numeric = [all(not isinstance(row[i], str) for row in rows) for i in range(len(headers))]
  lines = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in cells]
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# Measuring: compile, check the memory, time.
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class Point:
  """One variant at one length; times in seconds, memory in bytes, None if not measured."""
  variant: str
  length: int
  flops: float
  fwd_s: Optional[float] = None
  fwd_bwd_s: Optional[float] = None
  compile_fwd_s: Optional[float] = None
  compile_fwd_bwd_s: Optional[float] = None
  temp_fwd_bytes: Optional[int] = None
  temp_fwd_bwd_bytes: Optional[int] = None
  note: str = ""


def attention_fn(name, s: Settings):
  """(q, k, v) -> out for a variant (or the baseline) with its benchmark options."""
  if name == BASELINE:
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=s.causal)
  fn, options = attention.get(name), s.options.get(name, {})
  return lambda q, k, v: fn(q, k, v, causal=s.causal, **options)


def forward_backward(forward):
  """(q, k, v, cotangent) -> gradients of sum(out * cotangent): a real backward pass."""
  def loss(q, k, v, cotangent):
    return jnp.sum(forward(q, k, v).astype(jnp.float32) * cotangent.astype(jnp.float32))
  return jax.grad(loss, argnums=(0, 1, 2))


def input_specs(s: Settings, length):
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


def compile_point(name, s: Settings, length, held_bytes=0):
  """Compiles fwd and fwd+bwd at `length`: the Point with their compile times
  and memory, and {mode key: (executable, inputs)} of the modes within budget,
  the budget less `held_bytes` already allocated to other points' inputs."""
  point = Point(name, length, dense_equivalent_flops(
      s.batch, s.heads, length, length, s.head_dim, s.causal))
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


def measure_variant(name, s: Settings, sample_ceiling) -> tuple:
  """Every length of one variant, timed in s.rounds interleaved rounds.

  A point's time is the median of its rounds' medians: pooling the calls
  instead would let a fast round, which fits more calls into its share of
  --min_timing_seconds, outvote a slow one on short points only. Returns
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
                 *(format_number(t and t * 1e3) for t in (point.fwd_s, point.fwd_bwd_s)),
                 *(format_number(b and b / MIB) for b in (point.temp_fwd_bytes,
                                                          point.temp_fwd_bwd_bytes)), point.note)
    points.append(point)
  return points, samples


def matmul_gflops(n, dtype, repeats, min_seconds=0.0) -> float:
  """GFLOP/s of an n x n x n matmul (2 n^3 FLOPs): median time of at least
  max(repeats, 5) calls and min_seconds of calls."""
  a, b = random_inputs([jax.ShapeDtypeStruct((n, n), jnp.dtype(dtype))] * 2, seed=1)
  executable = jax.jit(jnp.matmul).lower(a, b).compile()
  seconds = median_seconds(executable, (a, b), max(repeats, 5), min_seconds)
  return 2.0 * n**3 / seconds / 1e9


def check_variants_trace(s: Settings):
  """Traces every variant once (no compile) so a bad option fails before the long run."""
  for name in s.names:
    jax.eval_shape(attention_fn(name, s), *input_specs(s, s.lengths[0])[:3])


# ----------------------------------------------------------------------------
# Report: header, tables, CSV, plot.
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class Report:
  settings: Settings
  ceiling_gflops: float  # median of the samples taken through the run
  header: list   # lines
  points: list   # Points, by variant then length


# (CSV name, Markdown header) of the per-point table.
COLUMNS = (
    ("variant", "variant"),
    ("length", "L"),
    ("fwd_ms", "fwd ms"),
    ("fwd_bwd_ms", "fwd+bwd ms"),
    ("compile_fwd_s", "compile fwd s"),
    ("compile_fwd_bwd_s", "compile fwd+bwd s"),
    ("temp_fwd_mib", "temp fwd MiB"),
    ("temp_fwd_bwd_mib", "temp fwd+bwd MiB"),
    ("gflops_fwd_dense_equivalent", "GFLOP/s fwd (dense-equivalent)"),
    ("pct_matmul_ceiling", "% of matmul ceiling"),
    ("speedup_fwd_vs_baseline", "speedup fwd vs baseline"),
    ("speedup_fwd_bwd_vs_baseline", "speedup fwd+bwd vs baseline"),
    ("note", "note"),
)
SLOPE_COLUMNS = ("variant", "L timed", "slope fwd+bwd time", "time(Lmax)/time(Lmin)",
                 "slope temp fwd+bwd memory")


def _scaled(value, scale):
  return None if value is None else value * scale


def _ratio(numerator, denominator):
  return None if numerator is None or not denominator else numerator / denominator


def point_rows(report: Report) -> list:
  """One dict per point, keyed by the COLUMNS' CSV names."""
  baseline = {p.length: p for p in report.points if p.variant == BASELINE}
  rows = []
  for p in report.points:
    gflops = _ratio(_scaled(p.flops, 1e-9), p.fwd_s)
    base = baseline.get(p.length, Point(BASELINE, p.length, p.flops))
    rows.append(dict(
        variant=p.variant, length=p.length,
        fwd_ms=_scaled(p.fwd_s, 1e3), fwd_bwd_ms=_scaled(p.fwd_bwd_s, 1e3),
        compile_fwd_s=p.compile_fwd_s, compile_fwd_bwd_s=p.compile_fwd_bwd_s,
        temp_fwd_mib=_scaled(p.temp_fwd_bytes, 1 / MIB),
        temp_fwd_bwd_mib=_scaled(p.temp_fwd_bwd_bytes, 1 / MIB),
        gflops_fwd_dense_equivalent=gflops,
        pct_matmul_ceiling=_scaled(_ratio(gflops, report.ceiling_gflops), 100),
        speedup_fwd_vs_baseline=_ratio(base.fwd_s, p.fwd_s),
        speedup_fwd_bwd_vs_baseline=_ratio(base.fwd_bwd_s, p.fwd_bwd_s),
        note=p.note))
  return rows


def slope_rows(report: Report) -> list:
  """Per variant: lengths timed, slopes of fwd+bwd time and temp memory, time ratio."""
  rows = []
  for name in report.settings.names:
    points = [p for p in report.points if p.variant == name]
    timed = [p for p in points if p.fwd_bwd_s]
    rows.append([
        name,
        f"{timed[0].length}..{timed[-1].length} ({len(timed)})" if timed else "none",
        fit_slope([p.length for p in timed], [p.fwd_bwd_s for p in timed]),
        _ratio(timed[-1].fwd_bwd_s, timed[0].fwd_bwd_s) if len(timed) > 1 else None,
        fit_slope([p.length for p in points], [p.temp_fwd_bwd_bytes for p in points])])
  return rows


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def header_lines(s: Settings, ceiling_samples, ceiling_gflops) -> list:
  device = jax.devices()[0]
  options = "; ".join(f"{name} {({**attention.variant(name).options, **s.options[name]})}"
                      for name in s.variants)
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


def markdown(report: Report) -> str:
  rows = [[row[key] for key, _ in COLUMNS] for row in point_rows(report)]
  slope_note = ("Slopes are least-squares fits of log value on log L: 2 is O(L^2), 1 is O(L); "
                "memory over every compiled length, time over those timed.")
  return "\n".join(
      ["# Attention benchmark", ""] + [f"- {line}" for line in report.header] + [""]
      + [markdown_table([h for _, h in COLUMNS], rows), "",
         "GFLOP/s counts dense attention's 4*B*H*Lq*Lk*D FLOPs (halved if causal) for every "
         "variant; speedup = baseline time / variant time.", "",
         markdown_table(SLOPE_COLUMNS, slope_rows(report)), "", slope_note, ""])


def write_csv(report: Report, path):
  s = report.settings
  shape = dict(batch=s.batch, heads=s.heads, kv_heads=s.kv_heads, head_dim=s.head_dim,
               dtype=s.dtype, causal=s.causal, matmul_ceiling_gflops=report.ceiling_gflops)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, [key for key, _ in COLUMNS] + list(shape))
    writer.writeheader()
    for row in point_rows(report):
      writer.writerow({**row, **shape})


def write_plot(report: Report, path):
  """fwd+bwd time and temp memory against L, log-log, the fitted slopes in the legends."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(13, 5.5))
  for name in report.settings.names:
    points = [p for p in report.points if p.variant == name]
    for ax, attr, scale in ((ax_time, "fwd_bwd_s", 1e3), (ax_memory, "temp_fwd_bwd_bytes", 1 / MIB)):
      xy = [(p.length, getattr(p, attr) * scale) for p in points if getattr(p, attr)]
      if xy:
        slope = fit_slope(*zip(*xy))
        ax.plot(*zip(*xy), "o-", color=f"C{report.settings.names.index(name)}",
                label=f"{name} (slope {slope:.2f})")
  s = report.settings
  for ax, what in ((ax_time, "fwd+bwd time (ms)"), (ax_memory, "fwd+bwd temp memory (MiB)")):
    ax.set_xscale("log", base=2)
    ax.set_xticks(s.lengths, [str(length) for length in s.lengths])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.LogFormatter())  # 40, not 4x10^1
    ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False))
    ax.set_xlabel("sequence length L")
    ax.set_ylabel(what)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  ax_time.set_title("fwd+bwd time against L")
  ax_memory.set_title("compiled temp memory against L")
  fig.suptitle(f"B={s.batch} H={s.heads} Hkv={s.kv_heads} D={s.head_dim} {s.dtype} "
               f"causal={s.causal} on {jax.devices()[0].device_kind}; "
               f"matmul ceiling {report.ceiling_gflops:.0f} GFLOP/s", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(report: Report, out_dir):
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "benchmark.md"), "w") as f:
    f.write(markdown(report))
  write_csv(report, os.path.join(out_dir, "benchmark.csv"))
  write_plot(report, os.path.join(out_dir, "benchmark.png"))


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------

def run(s: Settings) -> Report:
  check_variants_trace(s)

  # A shared machine's speed drifts over a long run, so the ceiling is
  # sampled before each round of each variant rather than once at the start.
  def sample_ceiling():
    gflops = matmul_gflops(s.matmul_size, s.dtype, s.repeats, s.min_timing_seconds)
    logging.info("matmul ceiling sample: %.1f GFLOP/s", gflops)
    return gflops

  samples, points = [], []
  for name in s.names:
    variant_points, variant_samples = measure_variant(name, s, sample_ceiling)
    points += variant_points
    samples += variant_samples
  ceiling = float(np.median(samples))
  return Report(s, ceiling, header_lines(s, samples, ceiling), points)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Before settings_from_flags, whose memory budget starts jax's backend.
  kept = FLAGS.keep_freed_memory and host_malloc.keep_freed_memory()
  settings = settings_from_flags(FLAGS)
  if FLAGS.keep_freed_memory:
    settings = dataclasses.replace(settings, malloc=(
        "glibc keeps freed memory ("
        + ", ".join(f"{k}={v}" for k, (_, v) in host_malloc.SETTINGS.items()) + ")"
        if kept else "default (not glibc's malloc, so nothing was set)"))
  report = run(settings)
  print(markdown(report))
  if FLAGS.out_dir:
    write_outputs(report, FLAGS.out_dir)
    logging.info("wrote benchmark.{md,csv,png} to %s", FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)
