"""The benchmark's report: its tables as Markdown and CSV, and its log-log plot.

    print(report.markdown(results))
    report.write_outputs(results, "/tmp/bench")   # benchmark.md, .csv, .png

One row per point (variant and length) with times, compile times, temp
memory, GFLOP/s and the speedups over the baseline; then per variant the
least-squares slopes of log fwd+bwd time and log temp memory on log L (2 is
O(L^2), 1 is O(L)), the check of the first claim in docs/design.md. The
tables and slopes are attention_research/tabulate.py's, as the sweep tables'
are. The plot draws fwd+bwd time and temp memory against L, log-log, each
variant's slope in the legend.
"""

import os

import jax

from attention_research import tabulate
from attention_research.benchmark.measure import BASELINE, MIB, Results

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
    ("gflops_fwd_own", "GFLOP/s fwd (own FLOPs)"),
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


def point_rows(results: Results) -> list:
  """One dict per point, keyed by the COLUMNS' CSV names."""
  baseline = {p.length: p for p in results.points if p.variant == BASELINE}
  rows = []
  for p in results.points:
    gflops = _ratio(_scaled(p.flops, 1e-9), p.fwd_s)
    base = baseline.get(p.length)  # none without --baseline: no speedups
    base_fwd, base_fwd_bwd = (base.fwd_s, base.fwd_bwd_s) if base else (None, None)
    rows.append(dict(
        variant=p.variant, length=p.length,
        fwd_ms=_scaled(p.fwd_s, 1e3), fwd_bwd_ms=_scaled(p.fwd_bwd_s, 1e3),
        compile_fwd_s=p.compile_fwd_s, compile_fwd_bwd_s=p.compile_fwd_bwd_s,
        temp_fwd_mib=_scaled(p.temp_fwd_bytes, 1 / MIB),
        temp_fwd_bwd_mib=_scaled(p.temp_fwd_bwd_bytes, 1 / MIB),
        gflops_fwd_dense_equivalent=gflops,
        pct_matmul_ceiling=_scaled(_ratio(gflops, results.ceiling_gflops), 100),
        gflops_fwd_own=_ratio(_scaled(p.own_flops, 1e-9), p.fwd_s),
        speedup_fwd_vs_baseline=_ratio(base_fwd, p.fwd_s),
        speedup_fwd_bwd_vs_baseline=_ratio(base_fwd_bwd, p.fwd_bwd_s),
        note=p.note))
  return rows


def slope_rows(results: Results) -> list:
  """Per variant: lengths timed, slopes of fwd+bwd time and temp memory, time ratio."""
  rows = []
  for name in results.setup.names:
    points = [p for p in results.points if p.variant == name]
    timed = [p for p in points if p.fwd_bwd_s]
    rows.append([
        name,
        f"{timed[0].length}..{timed[-1].length} ({len(timed)})" if timed else "none",
        tabulate.loglog_fit([p.length for p in timed], [p.fwd_bwd_s for p in timed]).slope,
        _ratio(timed[-1].fwd_bwd_s, timed[0].fwd_bwd_s) if len(timed) > 1 else None,
        tabulate.loglog_fit([p.length for p in points],
                            [p.temp_fwd_bwd_bytes for p in points]).slope])
  return rows


def markdown(results: Results) -> str:
  rows = [[row[key] for key, _ in COLUMNS] for row in point_rows(results)]
  slope_note = ("Slopes are least-squares fits of log value on log L: 2 is O(L^2), 1 is O(L); "
                "memory over every compiled length, time over those timed.")
  return "\n".join(
      ["# Attention benchmark", ""] + [f"- {line}" for line in results.header] + [""]
      + [tabulate.markdown_table([h for _, h in COLUMNS], rows), "",
         "GFLOP/s (dense-equivalent) counts dense attention's 4*B*H*Lq*Lk*D FLOPs (halved if "
         "causal) for every variant, so a variant that skips work can pass the ceiling; "
         "GFLOP/s (own FLOPs) counts the variant's own, the registry's cost "
         "(`attention.variant(name).flops_per_query`; dense's for the baseline); "
         "speedup = baseline time / variant time.", "",
         tabulate.markdown_table(SLOPE_COLUMNS, slope_rows(results)), "", slope_note, ""])


def csv_text(results: Results) -> str:
  """The per-point table with the shape and the ceiling repeated on every row."""
  s = results.setup
  shape = dict(batch=s.batch, heads=s.heads, kv_heads=s.kv_heads, head_dim=s.head_dim,
               dtype=s.dtype, causal=s.causal, matmul_ceiling_gflops=results.ceiling_gflops)
  rows = [[row[key] for key, _ in COLUMNS] + list(shape.values()) for row in point_rows(results)]
  # The csv module's own line end, "\r\n", as the benchmark.csv files in
  # docs/benchmarks were written: a rerun differs from them only where the numbers do.
  return tabulate.csv_table([key for key, _ in COLUMNS] + list(shape), rows,
                            lineterminator="\r\n") + "\r\n"


def write_plot(results: Results, path):
  """fwd+bwd time and temp memory against L, log-log, the fitted slopes in the legends."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  s = results.setup
  fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(13, 5.5))
  for name in s.names:
    points = [p for p in results.points if p.variant == name]
    for ax, attr, scale in ((ax_time, "fwd_bwd_s", 1e3), (ax_memory, "temp_fwd_bwd_bytes", 1 / MIB)):
      xy = [(p.length, getattr(p, attr) * scale) for p in points if getattr(p, attr)]
      if xy:
        slope = tabulate.loglog_fit(*zip(*xy)).slope
        ax.plot(*zip(*xy), "o-", color=f"C{s.names.index(name)}",
                label=f"{name} (slope {slope:.2f})")
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
               f"matmul ceiling {results.ceiling_gflops:.0f} GFLOP/s", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110, format="png")  # the path may not end in .png
  plt.close(fig)


def write_outputs(results: Results, out_dir):
  """Writes benchmark.md, benchmark.csv and benchmark.png into out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  # Each file is written whole beside its name, then renamed: a run stopped while
  # rewriting its files after a variant keeps the previous, complete ones.
  def replace(name, write):
    path = os.path.join(out_dir, name)
    write(path + ".tmp")
    os.replace(path + ".tmp", path)
  replace("benchmark.md", lambda path: _write_text(path, markdown(results)))
  replace("benchmark.csv", lambda path: _write_text(path, csv_text(results)))
  replace("benchmark.png", lambda path: write_plot(results, path))


def _write_text(path, content):
  with open(path, "w", newline="") as f:  # newline="": the CSV's "\r\n" as written
    f.write(content)
