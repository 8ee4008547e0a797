"""The one table writer and the one log-log slope fit (attention_research/tabulate.py),
which the benchmark's report and the sweep tables share: the fit against
numpy.polyfit and exact power laws, its edge cases, and the tables' layout.
"""

import math

import numpy as np
import pytest

from attention_research import tabulate


@pytest.mark.parametrize("coefficient, exponent", [(3.0, 2.0), (0.5, 1.0), (7.0, 0.5)])
def test_loglog_fit_recovers_known_power_laws(coefficient, exponent):
  lengths = np.array([64, 128, 256, 1024])
  fit = tabulate.loglog_fit(lengths, coefficient * lengths**exponent)
  assert fit.slope == pytest.approx(exponent)
  assert fit.intercept == pytest.approx(math.log(coefficient))


def test_loglog_fit_matches_polyfit_on_noisy_data():
  rng = np.random.default_rng(0)
  lengths = np.array([100, 300, 1000, 2000, 5000])
  times = 1e-6 * lengths**1.7 * np.exp(rng.normal(0, 0.2, lengths.size))
  slope, intercept = np.polyfit(np.log(lengths), np.log(times), 1)
  fit = tabulate.loglog_fit(lengths, times)
  assert fit.slope == pytest.approx(slope, rel=1e-12)
  assert fit.intercept == pytest.approx(intercept, rel=1e-12)


def test_loglog_fit_of_constant_values_is_exactly_flat():
  # The rounding of the mean of equal logs used to leave a slope of 6.6e-31.
  assert tabulate.loglog_fit([1024, 2048, 4096, 8192, 16384], [6752256] * 5) == (
      math.log(6752256), 0.0)


def test_loglog_fit_drops_points_it_cannot_log_and_needs_two_distinct_x():
  # Missing (None, NaN) and zero values drop out; what is left is exactly L^2.
  assert tabulate.loglog_fit([64, 128, 256, 512, 1024],
                             [None, 128.0**2, 0, 512.0**2, math.nan]).slope == pytest.approx(2.0)
  assert tabulate.loglog_fit([0, 128, 256], [1.0, 128.0, 256.0]).slope == pytest.approx(1.0)
  for xs, ys in (([64, 128], [1.0, None]), ([], []), ([4.0, 4.0], [1.0, 2.0])):
    assert all(math.isnan(v) for v in tabulate.loglog_fit(xs, ys)), (xs, ys)


def test_markdown_table_formats_numbers_and_aligns_by_cell_type():
  table = tabulate.markdown_table(["name", "ms", "n"], [["dense", 1234.5678, 3],
                                                       ["local", None, 12]])
  assert table.splitlines() == ["| name | ms | n |", "|:---|---:|---:|",
                                "| dense | 1235 | 3 |", "| local | - | 12 |"]


def test_markdown_table_takes_an_alignment_and_escapes_pipes():
  assert tabulate.markdown_table(["a|b", "c"], [["x|y", "1"]], align="lr") == (
      "| a\\|b | c |\n|:---|---:|\n| x\\|y | 1 |")
  with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
    tabulate.markdown_table(["a", "b"], [], align="l")


@pytest.mark.parametrize("value, text", [(None, "-"), (math.nan, "-"), ("n/a", "n/a"),
                                         (7, "7"), (np.int64(7), "7"), (123.4, "123"),
                                         (12.34, "12.3"), (1.234, "1.23"), (0.01234, "0.0123")])
def test_format_number(value, text):
  assert tabulate.format_number(value) == text


def test_csv_table_quotes_and_ends_lines_as_asked():
  assert tabulate.csv_table(["a", "b, c"], [[1, None], ["x", 0.5]]) == 'a,"b, c"\n1,\nx,0.5'
  assert tabulate.csv_table(["a"], [[1]], lineterminator="\r\n") == "a\r\n1"


def test_latex_tabular_escapes_every_cell():
  assert tabulate.latex_tabular(["f_1", "#"], [["a&b", "{1}"]], "lr").splitlines() == [
      r"\begin{tabular}{lr}", r"\toprule", r"f\_1 & \# \\", r"\midrule", r"a\&b & \{1\} \\",
      r"\bottomrule", r"\end{tabular}"]
