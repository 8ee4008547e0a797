"""Benchmark attention variants: time and memory against sequence length.

The flags, and the printed and written report, of the benchmark in
attention_research/benchmark/ (measure.py says what is measured and how:
forward and forward+backward time in interleaved rounds, compile time, the
compiled temp memory, a matmul as the GFLOP/s ceiling and
jax.nn.dot_product_attention as the baseline, points over the memory budget
or past --max_seconds skipped with a note). It prints Markdown tables (per
point, then each variant's fitted log-log slope) and, with --out_dir, writes
benchmark.md, benchmark.csv and benchmark.png (fwd+bwd time and temp memory
against L, log-log, each variant's slope in the legend), rewritten after each
variant with a "partial" line until the last.

    python -m experiments.benchmark_attention \
        --variants=dense,blockwise,local,linear,performer \
        --lengths=1024,2048,4096,8192,16384 --out_dir=/tmp/bench

It tests the first claim in docs/design.md: a slope near 2 is O(L^2), near 1 is O(L).
"""

import ast
import dataclasses
import functools

from absl import app
from absl import flags
from absl import logging

from attention_research import attention
from attention_research import benchmark
from attention_research.attention import kernels
from attention_research.benchmark import host_malloc
from attention_research.benchmark import measure

# The benchmark's choices of options where they differ from the variants'
# defaults (which the registry holds and the report prints).
BENCHMARK_DEFAULTS = {"local": {"window": 256}}  # the target window

flags.DEFINE_list("variants", None,
                  f"Registered attention variants (default: all of {attention.names()}), or "
                  "variant@implementation (e.g. blockwise@cudnn) to time one kernel. "
                  f"`baseline` names {benchmark.BASELINE}, which is always included unless "
                  "--nobaseline.")
flags.DEFINE_bool("baseline", True,
                  f"Also time {benchmark.BASELINE}, the reference for the speedups.")
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
                   f"most {measure.MAX_CALLS} calls), so a point of a few ms gets a stable median "
                   "on a noisy machine.")
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
                  "attention_research/benchmark/host_malloc.py). By default every call "
                  "page-faults its buffers of 32 MiB and more afresh while smaller ones are "
                  "reused: a real cost on CPU, which falls on long sequences and on whatever "
                  "materialises large arrays. With the flag, times are the computation's alone.")
flags.DEFINE_string("out_dir", None, "Write benchmark.{md,csv,png} here (default: only print).")

FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------
# Flags to the benchmark's setup, checked before anything compiles.
# ----------------------------------------------------------------------------

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
  """Per-row options: BENCHMARK_DEFAULTS, then the --option overrides of the row's
  variant (--option=local.window=512 sets local's and local@pallas_tpu's), then
  the row's implementation."""
  unused = sorted(set(overrides) - {measure.registered(name) for name in variants})
  if unused:
    raise ValueError(f"--option sets options of {unused}, which are not in --variants {list(variants)}")
  options = {}
  for name in variants:
    base, _, implementation = name.partition("@")
    options[name] = {**BENCHMARK_DEFAULTS.get(base, {}), **overrides.get(base, {})}
    if implementation:
      options[name]["implementation"] = implementation
  return options


def parse_variants(names, baseline_flag):
  """--variants -> (row names, whether to time the baseline). A row is a registered
  variant, or variant@implementation: that variant run by one kernel."""
  names = attention.names() if names is None else names
  baseline_named = any(n in ("baseline", benchmark.BASELINE) for n in names)
  if baseline_named and not baseline_flag:
    raise ValueError("--variants names the baseline but --nobaseline drops it")
  variants = [n for n in dict.fromkeys(names) if n not in ("baseline", benchmark.BASELINE)]
  for name in variants:
    base, at, implementation = name.partition("@")
    v = attention.variant(base)  # ValueError naming the registered variants
    if at and "implementation" not in v.options:
      with_kernels = [n for n in attention.names()
                      if "implementation" in attention.variant(n).options]
      raise ValueError(f"--variants={name}: attention {base!r} has no vendor kernels; those "
                       f"that have: {with_kernels}")
    if at and implementation not in kernels.IMPLEMENTATIONS:
      raise ValueError(f"--variants={name}: unknown implementation {implementation!r}; "
                       f"allowed: {list(kernels.IMPLEMENTATIONS)}")
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


def setup_from_flags(f) -> benchmark.BenchmarkSetup:
  """The benchmark's setup from parsed absl flags; a bad flag is an app.UsageError naming it."""
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
    budget = (benchmark.default_memory_budget_bytes() if f.memory_budget_gb is None
              else f.memory_budget_gb * measure.GIB)
    return benchmark.BenchmarkSetup(
        variants=variants, lengths=parse_lengths(f.lengths), memory_budget_bytes=budget,
        baseline=baseline, batch=f.batch, heads=f.heads, kv_heads=kv_heads, head_dim=f.head_dim,
        dtype=f.dtype, causal=f.causal, repeats=f.repeats, min_timing_seconds=f.min_timing_seconds,
        rounds=f.rounds, options=benchmark_options(variants, parse_options(f.option)),
        max_seconds=f.max_seconds, matmul_size=f.matmul_size)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


# ----------------------------------------------------------------------------
# The run and its output.
# ----------------------------------------------------------------------------

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Before setup_from_flags, whose memory budget starts jax's backend.
  kept = FLAGS.keep_freed_memory and host_malloc.keep_freed_memory()
  setup = setup_from_flags(FLAGS)
  if FLAGS.keep_freed_memory:
    setup = dataclasses.replace(setup, malloc=(
        "glibc keeps freed memory ("
        + ", ".join(f"{k}={v}" for k, (_, v) in host_malloc.SETTINGS.items()) + ")"
        if kept else "default (not glibc's malloc, so nothing was set)"))
  # With --out_dir the files are rewritten after each variant, so a run stopped by
  # a time limit leaves the variants it finished.
  write = (functools.partial(benchmark.write_outputs, out_dir=FLAGS.out_dir)
           if FLAGS.out_dir else None)
  results = benchmark.run(setup, on_variant=write)
  print(benchmark.markdown(results))
  if FLAGS.out_dir:
    benchmark.write_outputs(results, FLAGS.out_dir)
    logging.info("wrote benchmark.{md,csv,png} to %s", FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)
