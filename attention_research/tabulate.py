"""Tables and log-log slopes, written one way for the benchmark and the sweep tables.

    print(tabulate.markdown_table(["variant", "ms"], [["dense", 12.3], ["local", None]]))
    tabulate.loglog_fit(lengths, seconds).slope   # 2 for O(L^2), 1 for O(L)

Both attention_research/benchmark/report.py and attention_research/sweep/tables.py
print their tables through these functions and fit their slopes with
`loglog_fit`, so a Markdown table or a slope means the same thing in
docs/benchmarks and in docs/results. The functions take a header and rows of
cells and return text without a trailing newline; what frames a table (a
title, a caption, a note) stays with its caller.
"""

import csv
import io
import math
from typing import NamedTuple

import numpy as np


# ---------------------------------------------------------------------- cells

def format_number(value) -> str:
  """Three or so significant digits; '-' for a missing value (None or NaN);
  text and integers as they are."""
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


# --------------------------------------------------------------------- tables

def markdown_table(header, rows, align=None) -> str:
  """A Markdown table. Text cells are written as they are, other cells through
  `format_number`; a '|' in any cell or header is escaped.

  align: one 'l' or 'r' per column; by default a column is right-aligned
    when none of its cells is text (numbers and missing values), else left.
  """
  if align is None:
    align = ["r" if all(not isinstance(row[i], str) for row in rows) else "l"
             for i in range(len(header))]
  if len(align) != len(header) or set(align) - {"l", "r"}:
    raise ValueError(f"align needs one 'l' or 'r' per column ({len(header)}), got {align!r}")

  def line(cells):
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
  lines = [line(header), "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|"]
  lines += [line([c if isinstance(c, str) else format_number(c) for c in row]) for row in rows]
  return "\n".join(lines)


def csv_table(header, rows, lineterminator="\n") -> str:
  """CSV text (the csv module's quoting; None is an empty cell; numbers as str() writes
  them) without a trailing line end. lineterminator="\\r\\n" gives RFC 4180's."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator=lineterminator)
  writer.writerow(header)
  writer.writerows(rows)
  return out.getvalue().removesuffix(lineterminator)


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}", "±": r"$\pm$"}


def latex_escape(text) -> str:
  """`text` with LaTeX's special characters escaped."""
  return "".join(_LATEX_SPECIALS.get(c, c) for c in text)


def latex_tabular(header, rows, columns) -> str:
  """A booktabs tabular environment (\\toprule, \\midrule, \\bottomrule), every cell
  escaped. columns: the LaTeX column spec, e.g. "lrr|rr"."""
  lines = [rf"\begin{{tabular}}{{{columns}}}", r"\toprule",
           " & ".join(latex_escape(c) for c in header) + r" \\", r"\midrule"]
  lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows]
  lines += [r"\bottomrule", r"\end{tabular}"]
  return "\n".join(lines)


# --------------------------------------------------------------------- slopes

class LogLogFit(NamedTuple):
  """log y = intercept + slope * log x (natural logs)."""
  intercept: float
  slope: float


def _loggable(value) -> bool:
  return value is not None and bool(np.isfinite(value)) and value > 0


def loglog_fit(xs, ys) -> LogLogFit:
  """The least-squares fit of log y on log x over the points where both are
  positive and finite (a missing y, None or NaN, a zero memory, drops out).

  The slope is the exponent of y in x: 2 for the time of O(L^2) attention, 1
  for O(L). Fewer than two distinct x left: (NaN, NaN), which a table shows
  as missing, for a series with one point is no error. All y equal: slope
  exactly 0.0 (an exactly flat memory), not the 1e-31 that the rounding of
  the mean of equal logs would leave.
  """
  pairs = [(float(x), float(y)) for x, y in zip(xs, ys) if _loggable(x) and _loggable(y)]
  log_x = np.log([x for x, _ in pairs])
  log_y = np.log([y for _, y in pairs])
  if len(set(log_x)) < 2:
    return LogLogFit(math.nan, math.nan)
  if len(set(log_y)) == 1:
    return LogLogFit(float(log_y[0]), 0.0)
  x_centered = log_x - log_x.mean()
  slope = float(np.sum(x_centered * (log_y - log_y.mean())) / np.sum(x_centered**2))
  return LogLogFit(float(log_y.mean() - slope * log_x.mean()), slope)
