"""The attention benchmark (attention_research/benchmark/): its arithmetic
against independent references (hand-counted FLOPs, the registry's cost, a
separate compile), its timing on a fake clock, runs at tiny shapes that skip a
point over the memory budget and lengths past max_seconds; and its binary
(experiments/benchmark_attention.py): option and flag parsing, and one
end-to-end run that prints the tables and writes the CSV, Markdown and PNG.
The table writer and the slope fit are tested in test_tabulate.py.
"""

import csv

from absl import app
from absl import flags
from absl.testing import flagsaver
import jax
import jax.numpy as jnp
import pytest

from attention_research import attention
from attention_research.benchmark import measure
from attention_research.benchmark import report
from experiments import benchmark_attention as binary

BASELINE = measure.BASELINE
TINY = ["--heads=2", "--head_dim=8", "--repeats=1", "--min_timing_seconds=0", "--matmul_size=128",
        "--rounds=1"]


def run_binary(capsys, *args):
  """Runs the binary's main with these flags; returns what it printed."""
  with flagsaver.flagsaver():
    flags.FLAGS(["benchmark_attention", *TINY, *args])
    binary.main(["benchmark_attention"])
  return capsys.readouterr().out


def tiny_setup(**fields):
  """The setup TINY's flags give (the baseline off unless asked), with `fields` replaced."""
  return measure.BenchmarkSetup(**{
      **dict(variants=("dense",), lengths=(64,), baseline=False, heads=2, kv_heads=2,
             head_dim=8, repeats=1, min_timing_seconds=0.0, matmul_size=128, rounds=1,
             memory_budget_bytes=measure.default_memory_budget_bytes()),
      **fields})


def run_and_write(setup, out_dir):
  """Runs the benchmark and writes its files; returns (results, the CSV's rows)."""
  results = measure.run(setup)
  report.write_outputs(results, out_dir)
  return results, read_csv(out_dir / "benchmark.csv")


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_dense_equivalent_flops_by_hand():
  # B=1, H=8, L=1024, D=64: QK^T and PV are each 2 * 1024 * 1024 * 64 per head.
  assert measure.dense_equivalent_flops(1, 8, 1024, 1024, 64, causal=False) == 8 * 2 * (
      2 * 1024 * 1024 * 64)
  assert measure.dense_equivalent_flops(2, 4, 16, 32, 8, causal=True) == 2 * 4 * 16 * 32 * 8 * 2


def test_parse_options_and_benchmark_defaults():
  options = binary.parse_options(["local.window=256", "bigbird.block_size=32",
                                 "linear.feature_map=relu", "performer.num_features=64"])
  assert options == {"local": {"window": 256}, "bigbird": {"block_size": 32},
                     "linear": {"feature_map": "relu"}, "performer": {"num_features": 64}}
  assert binary.parse_options([]) == {}
  # The benchmark's own default window is 256; an --option overrides it.
  assert binary.benchmark_options(["local", "dense"], {}) == {"local": {"window": 256}, "dense": {}}
  assert binary.benchmark_options(["local"], {"local": {"window": 64}}) == {"local": {"window": 64}}


@pytest.mark.parametrize("string, match", [
    ("local.window", "expected variant.option=value"),
    ("window=256", "expected variant.option=value"),
    ("nosuch.window=3", "unknown attention variant 'nosuch'"),
    ("local.nosuch=3", "has no option 'nosuch'"),
    ("local.window=[1,", "local.window"),
    ("local.window=2 56", "local.window"),
])
def test_bad_option_raises_naming_it(string, match):
  with pytest.raises(ValueError, match=match) as error:
    binary.parse_options([string])
  assert f"--option={string!r}" in str(error.value)


def test_option_for_a_variant_not_benchmarked_is_an_error():
  with pytest.raises(ValueError, match=r"\['bigbird'\], which are not in --variants"):
    binary.benchmark_options(["local"], {"bigbird": {"block_size": 32}})


@pytest.mark.parametrize("args, match", [
    (["--variants=dense,nosuch"], "unknown attention variant 'nosuch'"),
    (["--kv_heads=3"], r"--kv_heads \(3\) must divide --heads \(2\)"),
    (["--lengths=64,x"], "--lengths must be positive integers"),
    (["--variants=dense", "--option=local.window=8"], "not in --variants"),
    (["--variants=dense,baseline", "--nobaseline"], "--nobaseline"),
    (["--min_timing_seconds=-1"], "--min_timing_seconds must be >= 0"),
    (["--rounds=0"], "--rounds must be >= 1, got 0"),
    (["--variants=linear@cudnn"], r"--variants=linear@cudnn: attention 'linear' has no vendor "
                                  r"kernels; those that have: \['dense', 'blockwise'"),
    (["--variants=dense@triton"], r"--variants=dense@triton: unknown implementation 'triton'; "
                                  r"allowed: \['auto', 'xla', 'pallas_tpu', 'pallas_gpu', "
                                  r"'cudnn'\]"),
])
def test_bad_flags_are_usage_errors(args, match):
  with flagsaver.flagsaver():
    flags.FLAGS(["benchmark_attention", *TINY, *args])
    with pytest.raises(app.UsageError, match=match):
      binary.setup_from_flags(flags.FLAGS)


def test_flags_become_the_setup():
  with flagsaver.flagsaver():
    flags.FLAGS(["benchmark_attention", *TINY, "--variants=local,dense", "--lengths=128,64",
                 "--memory_budget_gb=2", "--causal"])
    setup = binary.setup_from_flags(flags.FLAGS)
  # kv_heads defaults to heads; lengths are sorted; local gets the benchmark's window.
  assert setup == tiny_setup(variants=("local", "dense"), lengths=(64, 128), baseline=True,
                             memory_budget_bytes=2 * 2**30, causal=True,
                             options={"local": {"window": 256}, "dense": {}})


class FakeExecutable:
  """Records calls; each call 'takes' the next of `seconds` on a fake clock."""

  def __init__(self, seconds, monkeypatch):
    self.seconds, self.calls, self.now = list(seconds), 0, 0.0
    monkeypatch.setattr(measure.time, "perf_counter", lambda: self.now)

  def __call__(self, *args):
    self.now += self.seconds[min(self.calls, len(self.seconds) - 1)]
    self.calls += 1
    return jnp.zeros(())


def test_median_seconds_times_short_calls_until_min_seconds(monkeypatch):
  # Warm-up (not timed), then 3 calls of 0.1 s reach min_seconds = 0.25.
  fake = FakeExecutable([9.0, 0.1], monkeypatch)
  assert measure.median_seconds(fake, (), repeats=1, min_seconds=0.25) == pytest.approx(0.1)
  assert fake.calls == 1 + 3
  # `repeats` is a floor even when the first calls already exceed min_seconds.
  fake = FakeExecutable([9.0, 1.0, 2.0, 3.0, 4.0, 5.0], monkeypatch)
  assert measure.median_seconds(fake, (), repeats=5, min_seconds=0.5) == pytest.approx(3.0)
  assert fake.calls == 1 + 5
  # However fast the calls, at most MAX_CALLS are timed.
  fake = FakeExecutable([0.0], monkeypatch)
  measure.median_seconds(fake, (), repeats=1, min_seconds=1.0)
  assert fake.calls == 1 + measure.MAX_CALLS


def test_rounds_interleave_the_lengths_and_report_the_median_of_round_medians(
    tmp_path, monkeypatch):
  order, seconds = [], iter(range(1, 100))
  def fake_call_seconds(executable, args, calls, min_seconds, max_calls):
    del executable, min_seconds, max_calls
    order.append((args[0].shape[1], "fwd" if len(args) == 3 else "fwd+bwd"))
    return [float(next(seconds)) for _ in range(calls)]
  monkeypatch.setattr(measure, "call_seconds", fake_call_seconds)
  samples = iter([300.0, 100.0, 200.0])
  monkeypatch.setattr(measure, "matmul_gflops", lambda *args: next(samples))
  _, (first, second) = run_and_write(tiny_setup(lengths=(64, 128), rounds=3, repeats=5),
                                     tmp_path)
  one_round = [(64, "fwd"), (64, "fwd+bwd"), (128, "fwd"), (128, "fwd+bwd")]
  assert order == one_round * 3
  # 2 calls a round (ceil(5 / 3)); L=64's fwd got seconds 1, 2, then 9, 10, then 17, 18.
  assert float(first["fwd_ms"]) == 1e3 * 9.5
  assert float(second["fwd_bwd_ms"]) == 1e3 * 15.5
  assert "200.0 GFLOP/s (float32 128^3; median of 3 samples, one before each round of each " \
      "variant: 100 to 300)" in (tmp_path / "benchmark.md").read_text()


def test_a_fast_round_with_more_calls_does_not_outvote_the_others(tmp_path, monkeypatch):
  # A fast round fits five calls into its share of the time, slower ones two:
  # round medians 1, 5, 6 give 5, where pooling the nine calls would give 1.
  rounds = iter([[1.0] * 5, [5.0] * 2, [6.0] * 2] * 2)  # fwd, then fwd+bwd
  script = {}
  def fake_call_seconds(executable, args, calls, min_seconds, max_calls):
    del executable, calls, min_seconds, max_calls
    mode = "fwd" if len(args) == 3 else "fwd+bwd"
    if mode not in script:
      script[mode] = [next(rounds) for _ in range(3)]
    return script[mode].pop(0)
  monkeypatch.setattr(measure, "call_seconds", fake_call_seconds)
  monkeypatch.setattr(measure, "matmul_gflops", lambda *args: 100.0)
  _, (row,) = run_and_write(tiny_setup(rounds=3, repeats=5), tmp_path)
  assert float(row["fwd_ms"]) == float(row["fwd_bwd_ms"]) == 5e3


def test_end_to_end_tiny_run(tmp_path, capsys):
  # dense's XLA code, whatever the backend: a GPU's `auto` takes a kernel, whose memory is O(L).
  out = run_binary(capsys, "--variants=dense,local", "--lengths=64,128", f"--out_dir={tmp_path}",
                   "--option=dense.implementation=xla")
  rows = read_csv(tmp_path / "benchmark.csv")
  names = [BASELINE, "dense", "local"]
  assert [(r["variant"], int(r["length"])) for r in rows] == [
      (n, length) for n in names for length in (64, 128)]
  for r in rows:
    assert r["note"] == ""
    for key in ("fwd_ms", "fwd_bwd_ms", "compile_fwd_s", "temp_fwd_bwd_mib"):
      assert float(r[key]) > 0, (r["variant"], key)
    # GFLOP/s is the hand-counted dense FLOPs over the forward time.
    flops = 4 * 1 * 2 * int(r["length"]) ** 2 * 8
    assert float(r["gflops_fwd_dense_equivalent"]) == pytest.approx(
        flops / (float(r["fwd_ms"]) / 1e3) / 1e9)
    # Every variant here sees every key (local's window of 256 covers L <= 128),
    # so its own FLOPs are dense's.
    assert float(r["gflops_fwd_own"]) == pytest.approx(float(r["gflops_fwd_dense_equivalent"]))
  by_key = {(r["variant"], int(r["length"])): r for r in rows}
  assert float(by_key[BASELINE, 64]["speedup_fwd_vs_baseline"]) == 1.0

  # Dense memory is quadratic: doubling L at least triples it.
  for column in ("temp_fwd_mib", "temp_fwd_bwd_mib"):
    assert float(by_key["dense", 128][column]) >= 3 * float(by_key["dense", 64][column])
  # ... and is what a separate compile of the same function reports.
  spec = jax.ShapeDtypeStruct((1, 128, 2, 8), jnp.float32)
  dense = lambda q, k, v: attention.get("dense")(q, k, v, causal=False, implementation="xla")
  temp = jax.jit(dense).lower(spec, spec, spec).compile().memory_analysis().temp_size_in_bytes
  assert float(by_key["dense", 128]["temp_fwd_mib"]) * 2**20 == temp

  with open(tmp_path / "benchmark.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(tmp_path / "benchmark.csv", "rb") as f:
    assert f.read().count(b"\r\n") == 1 + len(rows)  # the csv module's line ends, as before
  markdown = (tmp_path / "benchmark.md").read_text()
  assert markdown.strip() in out
  assert "partial" not in markdown  # the last write is the whole run's
  assert "| variant | L | fwd ms | fwd+bwd ms |" in markdown
  assert "| GFLOP/s fwd (dense-equivalent) | % of matmul ceiling | GFLOP/s fwd (own FLOPs) |" \
      in markdown
  assert "| variant | L timed | slope fwd+bwd time |" in markdown
  assert "matmul ceiling:" in markdown and f"jax {jax.__version__}" in markdown
  assert "- host malloc: default\n" in markdown
  # The options line is the registry's defaults with the benchmark's window.
  local = {**attention.variant("local").options, "window": 256}
  assert f"; local {local}\n" in markdown


def test_own_flops_column_is_the_registry_cost_over_the_forward_time(monkeypatch):
  # Every timed call 'takes' 0.5 s.
  monkeypatch.setattr(measure, "call_seconds", lambda *args: [0.5])
  monkeypatch.setattr(measure, "matmul_gflops", lambda *args: 100.0)
  results = measure.run(tiny_setup(variants=("local",), lengths=(128,), baseline=True,
                                   options={"local": {"window": 16}}))
  rows = {row["variant"]: row for row in report.point_rows(results)}
  # local with a window of 16, not causal: each of the 128 queries sees
  # 2 * 16 + 1 = 33 keys, and q.k and p.v cost 2 D FLOPs each per key and
  # head: 4 H D = 4 * 2 * 8 FLOPs a key.
  assert rows["local"]["gflops_fwd_own"] == pytest.approx(128 * 33 * 4 * 2 * 8 / 0.5 / 1e9)
  # The baseline is dense attention: all 128 keys, as the dense-equivalent column counts.
  assert rows[BASELINE]["gflops_fwd_own"] == pytest.approx(128 * 128 * 4 * 2 * 8 / 0.5 / 1e9)
  for row in rows.values():
    assert row["gflops_fwd_dense_equivalent"] == pytest.approx(128 * 128 * 4 * 2 * 8 / 0.5 / 1e9)


def test_ceiling_is_the_median_of_one_sample_per_variant_round(tmp_path, monkeypatch):
  samples = iter([300.0, 100.0, 200.0])
  monkeypatch.setattr(measure, "matmul_gflops", lambda *args: next(samples))
  _, rows = run_and_write(tiny_setup(variants=("dense", "local"), baseline=True), tmp_path)
  assert {float(r["matmul_ceiling_gflops"]) for r in rows} == {200.0}
  for r in rows:
    assert float(r["pct_matmul_ceiling"]) == pytest.approx(
        float(r["gflops_fwd_dense_equivalent"]) / 2.0)
  assert "200.0 GFLOP/s (float32 128^3; median of 3 samples, one before each round of each " \
      "variant: 100 to 300)" in (tmp_path / "benchmark.md").read_text()


def test_a_run_stopped_part_way_has_written_the_rows_it_finished(tmp_path, capsys,
                                                                 monkeypatch):
  """A time limit (a lent accelerator's) stops the binary in its third variant: the files
  hold the baseline's and dense's rows, and say which variants are missing."""
  measure_variant = measure.measure_variant
  def stopped_at_local(name, *args):
    if name == "local":
      raise KeyboardInterrupt
    return measure_variant(name, *args)
  monkeypatch.setattr(measure, "measure_variant", stopped_at_local)
  with pytest.raises(KeyboardInterrupt):
    run_binary(capsys, "--variants=dense,local", "--lengths=64", f"--out_dir={tmp_path}")
  rows = read_csv(tmp_path / "benchmark.csv")
  assert [r["variant"] for r in rows] == [BASELINE, "dense"]
  assert all(float(r["fwd_bwd_ms"]) > 0 for r in rows)
  markdown = (tmp_path / "benchmark.md").read_text()
  assert "- partial: 2 of 3 variants measured when this was written; not yet: local" in markdown
  assert "| dense | 64 |" in markdown and "| local |" not in markdown
  assert "options: dense {" in markdown and "local {" not in markdown


def test_point_over_memory_budget_is_compiled_but_not_run(tmp_path):
  results, [row] = run_and_write(tiny_setup(memory_budget_bytes=1e-6 * 2**30,
                                            options={"dense": {"implementation": "xla"}}), tmp_path)
  # Needed: fwd+bwd's temp plus q, k, v, cotangent in and dq, dk, dv out (4 KiB each).
  needs = float(row["note"].removeprefix("skipped: needs ").split(" GiB > budget 1e-06 GiB")[0])
  assert needs * 2**30 == pytest.approx(float(row["temp_fwd_bwd_mib"]) * 2**20 + 7 * 4096,
                                        rel=5e-3)  # the note has 3 digits
  assert row["fwd_ms"] == "" and row["fwd_bwd_ms"] == ""
  assert float(row["temp_fwd_mib"]) > 0  # compiled, so its memory is still reported
  assert "skipped: needs" in report.markdown(results)


def test_inputs_held_for_shorter_lengths_count_against_the_budget(tmp_path, monkeypatch):
  compile_timed = measure.compile_timed
  def fixed_total(fn, specs):  # every program says it needs 100 kB
    executable, seconds, temp, _ = compile_timed(fn, specs)
    return executable, seconds, temp, 100_000
  monkeypatch.setattr(measure, "compile_timed", fixed_total)
  _, (first, second) = run_and_write(
      tiny_setup(lengths=(64, 128), memory_budget_bytes=110_000), tmp_path)
  assert float(first["fwd_bwd_ms"]) > 0 and first["note"] == ""
  # L=64 holds q, k, v and the cotangent, [1, 64, 2, 8] float32 = 4096 bytes each.
  assert second["fwd_ms"] == second["fwd_bwd_ms"] == ""
  assert second["note"] == f"skipped: needs {(100_000 + 4 * 4096) / 2**30:.3g} GiB > budget " \
      f"{110_000 / 2**30:.3g} GiB"


@pytest.mark.parametrize("rounds", [1, 2])
def test_lengths_past_max_seconds_are_skipped(tmp_path, rounds):
  _, (first, second) = run_and_write(
      tiny_setup(lengths=(64, 128), max_seconds=0.0, rounds=rounds), tmp_path)
  assert float(first["fwd_bwd_ms"]) > 0 and first["note"] == ""
  assert second["fwd_bwd_ms"] == ""
  assert second["note"] == "skipped: slower than --max_seconds at smaller L"


def test_a_program_too_big_to_compile_is_skipped_and_other_errors_are_not(
    tmp_path, monkeypatch):
  # On a GPU, XLA's autotuner allocates a program's buffers while compiling, so
  # a point far over the device's memory fails in compile(), not in the budget
  # check. Here fwd+bwd fails that way and fwd compiles.
  compile_timed = measure.compile_timed
  def failing(message):
    def compile_or_fail(fn, specs):
      if len(specs) == 4:  # q, k, v and the cotangent: the fwd+bwd program
        raise jax.errors.JaxRuntimeError(message)
      return compile_timed(fn, specs)
    return compile_or_fail

  monkeypatch.setattr(measure, "compile_timed", failing(
      "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 128.02GiB"))
  _, [row] = run_and_write(tiny_setup(), tmp_path)
  assert float(row["fwd_ms"]) > 0 and row["fwd_bwd_ms"] == "" and row["compile_fwd_bwd_s"] == ""
  assert row["note"] == "fwd+bwd skipped: out of device memory while compiling"

  monkeypatch.setattr(measure, "compile_timed", failing("INTERNAL: something else"))
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    measure.run(tiny_setup())


def test_a_row_per_kernel_times_the_variant_run_by_it(tmp_path, capsys):
  # blockwise run by the Pallas GPU kernel (interpret mode here) beside its own XLA code,
  # with local's --option reaching local@xla: one row each, the same FLOPs.
  with flagsaver.flagsaver():
    flags.FLAGS(["benchmark_attention", *TINY, "--variants=blockwise@xla,blockwise@pallas_gpu,"
                 "local@xla", "--option=local.window=8", "--lengths=128"])
    setup = binary.setup_from_flags(flags.FLAGS)
  assert setup.options == {"blockwise@xla": {"implementation": "xla"},
                           "blockwise@pallas_gpu": {"implementation": "pallas_gpu"},
                           "local@xla": {"window": 8, "implementation": "xla"}}
  run_binary(capsys, "--variants=blockwise@xla,blockwise@pallas_gpu", "--lengths=128",
             "--nobaseline", f"--out_dir={tmp_path}")
  rows = {r["variant"]: r for r in read_csv(tmp_path / "benchmark.csv")}
  assert set(rows) == {"blockwise@xla", "blockwise@pallas_gpu"}
  for r in rows.values():  # both compute dense attention's FLOPs, whoever runs them
    assert r["note"] == "" and float(r["fwd_bwd_ms"]) > 0
    assert float(r["gflops_fwd_own"]) == pytest.approx(float(r["gflops_fwd_dense_equivalent"]))
