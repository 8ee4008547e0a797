"""Sweep tables and plots on a hand-built sweep workdir: exact text, published columns, slopes.

No training: sweep.json and the result.json files are written by hand, with a
missing, a diverged and a failed trial, two seeds in one cell, and a cell
where one seed completed and one diverged.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from attention_research.sweep import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

HEADS = {
    "name": "heads",
    "caption": "Eval accuracy by heads (synthetic tasks stand in for WMT).",
    "rows": ["num_heads"],
    "columns": ["task"],
    "metric": "final_eval.accuracy",
    "metric_label": "eval accuracy",
    "format": "{:.3f}",
    "published": {"source": "Vaswani et al. 2017, Table 3",
                  "columns": ["PPL (dev)", "BLEU (dev)"],
                  "rows": {"1": [5.29, 24.9], "8": [4.91, 25.8], "16": [4.88, 25.8]}},
    "plots": [{"kind": "line", "x": "num_heads", "y": "final_eval.accuracy", "series": "task",
               "logx": True}],
}
COPY_LOSS = {
    "name": "copy_loss",
    "caption": "Eval loss on copy.",
    "rows": ["num_heads"],
    "columns": [],
    "metric": "final_eval.loss",
    "metric_label": "eval loss",
    "format": "{:.2f}",
    "filters": {"task": "copy"},
}

# (overrides, result or None for "not run yet"); accuracy and loss chosen so
# that means are exact in binary and their formatting cannot round either way.
TRIALS = [
    ({"num_heads": 1, "task": "order"}, ("completed", 0.5, 0.75)),
    ({"num_heads": 1, "task": "copy"}, ("completed", 0.25, 2.5)),
    ({"num_heads": 4, "task": "order"}, ("diverged", None, None)),
    ({"num_heads": 4, "task": "copy"}, None),
    ({"num_heads": 8, "task": "order", "seed": 0}, ("completed", 0.875, 0.5)),
    ({"num_heads": 8, "task": "order", "seed": 1}, ("completed", 0.9375, 0.25)),
    ({"num_heads": 8, "task": "copy"}, ("failed", None, None)),
    ({"num_heads": 2, "task": "order", "seed": 0}, ("completed", 0.625, 1.0)),
    ({"num_heads": 2, "task": "order", "seed": 1}, ("diverged", None, None)),
    ({"num_heads": 2, "task": "copy"}, ("completed", 0.125, 3.25)),
    ({"pos": "rope", "task": "order"}, ("completed", 0.99, 0.01)),  # no num_heads: not in them
]


def _result(status, accuracy, loss, **extra):
  result = {"status": status, "num_params": 1000, "flops_per_token": 2000.0,
            "wall_time_s": 1.5, "train_steps_per_s": 10.0, "train_step_temp_bytes": 4096}
  if status == "completed":
    result["final_eval"] = {"accuracy": accuracy, "loss": loss}
  else:
    result.update(final_eval=None, error=f"{status} on purpose")
  return result | extra


def make_workdir(root, trials, specs):
  """A sweep workdir laid out as runner.run leaves it."""
  os.makedirs(root, exist_ok=True)
  entries = []
  for index, (overrides, result) in enumerate(trials):
    tid = f"{index:010x}"
    entries.append({"index": index, "id": tid, "name": json.dumps(overrides),
                    "overrides": overrides})
    if result is not None:
      os.makedirs(os.path.join(root, "trials", tid))
      if isinstance(result, tuple):
        result = _result(*result)
      with open(os.path.join(root, "trials", tid, "result.json"), "w") as f:
        json.dump(result, f)
  with open(os.path.join(root, "sweep.json"), "w") as f:
    json.dump({"config": "configs/sweeps/fake.py", "tables": specs, "trials": entries}, f)
  return str(root)


@pytest.fixture
def workdir(tmp_path):
  return make_workdir(tmp_path / "sweep", TRIALS, [HEADS, COPY_LOSS])


PUB = "Vaswani et al. 2017, Table 3"
EXPECTED_MARKDOWN = f"""\
**heads**: Eval accuracy by heads (synthetic tasks stand in for WMT).

| num_heads | task=order | task=copy | {PUB}: PPL (dev) | {PUB}: BLEU (dev) |
|:---|---:|---:|---:|---:|
| 1 | 0.500 | 0.250 | 5.29 | 24.9 |
| 4 | diverged |  |  |  |
| 8 | 0.906 ± 0.397 (n=2) | failed | 4.91 | 25.8 |
| 2 | 0.625 (n=1; 1 diverged) | 0.125 |  |  |
| 16 |  |  | 4.88 | 25.8 |

*(n=k): over the cell's k completed trials (or, after a status, the k trials that ended \
so); mean ± the half-width of its 95% interval (Student's t).*

**copy_loss**: Eval loss on copy.

| num_heads | eval loss |
|:---|---:|
| 1 | 2.50 |
| 4 |  |
| 8 | failed |
| 2 | 3.25 |
"""

EXPECTED_CSV = f"""\
num_heads,task=order,task=copy,"{PUB}: PPL (dev)","{PUB}: BLEU (dev)"
1,0.500,0.250,5.29,24.9
4,diverged,,,
8,0.906 ± 0.397 (n=2),failed,4.91,25.8
2,0.625 (n=1; 1 diverged),0.125,,
16,,,4.88,25.8

num_heads,eval loss
1,2.50
4,
8,failed
2,3.25
"""


def test_markdown_is_the_hand_written_table(workdir):
  # Rows in first-appearance order (1, 4, 8, 2, not sorted), the paper's extra
  # row (16) after ours; a missing trial blank, unsuccessful ones by status,
  # seeds as mean and count; the pos=rope trial (no num_heads) left out.
  assert tables.render(workdir, "markdown") == EXPECTED_MARKDOWN


def test_csv_is_the_hand_written_table(workdir):
  # Standard CSV: a header with a comma in it is quoted, so csv readers split it right.
  assert tables.render(workdir, "csv") == EXPECTED_CSV


def test_latex_has_caption_label_and_separate_published_columns(workdir):
  text = tables.render(workdir, "latex")
  heads = text.split("\n\n")[0]
  assert r"\begin{table}[t]" in heads and r"\end{table}" in heads
  assert (r"\caption{Eval accuracy by heads (synthetic tasks stand in for WMT). (n=k): over the "
          r"cell's k completed trials (or, after a status, the k trials that ended so); mean "
          r"$\pm$ the half-width of its 95\% interval (Student's t).}") in heads
  assert r"\label{tab:heads}" in heads
  # Our three columns, a rule, then the paper's two.
  assert r"\begin{tabular}{lrr|rr}" in heads
  assert (rf"num\_heads & task=order & task=copy & {PUB}: PPL (dev) & {PUB}: BLEU (dev) \\"
          in heads)
  assert r"8 & 0.906 $\pm$ 0.397 (n=2) & failed & 4.91 & 25.8 \\" in heads
  assert r"16 &  &  & 4.88 & 25.8 \\" in heads
  assert r"\caption{Eval loss on copy.}" in text and r"\begin{tabular}{lr}" in text


def test_latex_escapes_special_characters():
  table = {"name": "a_b", "caption": "50% of $x_1$ & more", "header": ["f_1", "#"],
           "rows": [["a&b", "{1}"]], "note": "", "num_ours": 2}
  text = tables.format_table(table, "latex")
  assert r"\caption{50\% of \$x\_1\$ \& more}" in text
  assert r"f\_1 & \# \\" in text and r"a\&b & \{1\} \\" in text


def test_markdown_escapes_pipes():
  table = {"name": "t", "caption": "", "header": ["a|b", "c"], "rows": [["x|y", "1"]],
           "note": "", "num_ours": 2}
  assert tables.format_table(table, "markdown") == (
      "**t**\n\n| a\\|b | c |\n|:---|---:|\n| x\\|y | 1 |")


def test_cell_mean_and_status_counts():
  trials = [{"id": str(i), "name": str(i), "overrides": {}} for i in range(5)]
  values = [0.1, 0.2, 0.4]
  results = {str(i): _result("completed", v, 1.0) for i, v in enumerate(values)}
  results["3"], results["4"] = _result("failed", 0, 0), _result("failed", 0, 0)
  # (0.1 + 0.2 + 0.4) / 3, by hand; the sample std is sqrt(0.0466667 / 2) = 0.1527525,
  # and t(0.975, 2 degrees of freedom) = 4.302653 (a t table): 4.302653 * 0.1527525 /
  # sqrt(3) = 0.379458.
  assert tables._cell(trials, results, "final_eval.accuracy", "{:.6f}") == (
      "0.233333 ± 0.379458 (n=3; 2 failed)")
  assert tables._cell(trials[3:], results, "final_eval.accuracy", "{:.6f}") == "failed (n=2)"
  results["0"]["final_eval"]["accuracy"] = None  # e.g. a backend that reports no memory
  assert tables._cell(trials[:1], results, "final_eval.accuracy", "{:.6f}") == "n/a"


def test_nested_and_dotted_override_fields():
  overrides = {"task_options": {"seq_len": 256, "inner": {"k": 3}}, "model.depth": 2}
  assert tables.field_value(overrides, "task_options.seq_len") == 256
  assert tables.field_value(overrides, "task_options.inner.k") == 3
  assert tables.field_value(overrides, "model.depth") == 2
  assert tables.field_value(overrides, "task_options.nope", None) is None
  with pytest.raises(KeyError):
    tables.field_value(overrides, "num_heads")


def test_loglog_slope_of_exact_power_laws():
  x = np.array([256.0, 512.0, 1024.0, 4096.0])
  a, b = tables.loglog_slope(x, 3 * x ** 2)
  assert f"{b:.3f}" == "2.000" and a == pytest.approx(math.log(3), abs=1e-9)
  # Against a hand-computed fit on noisy data: slope = cov(lx, ly) / var(lx).
  ly = np.log([1.0, 3.0, 2.0, 8.0])
  lx = np.log(x)
  slope = np.sum((lx - lx.mean()) * (ly - ly.mean())) / np.sum((lx - lx.mean()) ** 2)
  assert tables.loglog_slope(x, np.exp(ly))[1] == pytest.approx(slope, rel=1e-12)
  # One distinct x: no fit, (NaN, NaN) as the benchmark's slope tables want it
  # (a plot labels such a series "slope n/a (one x)").
  assert all(math.isnan(v) for v in tables.loglog_slope([4.0, 4.0], [1.0, 2.0]))


SEQ_TRIALS = (
    # The grid may set the field dotted or the whole dict: both count.
    [({"attention": "dense", "task_options.seq_len": n}, ("completed", 0.5, 1.0))
     for n in (128, 256, 512)]
    + [({"attention": "linear", "task_options": {"seq_len": n}}, ("completed", 0.5, 1.0))
       for n in (128, 256, 512, 1024)]
    + [({"attention": "linear", "task_options": {"seq_len": 2048}}, ("diverged", 0, 0)),
       ({"attention": "dense", "task_options.seq_len": 1024}, None)])
SEQ_TABLE = {
    "name": "seq", "caption": "Memory by length.", "rows": ["task_options.seq_len"],
    "columns": ["attention"], "metric": "train_step_temp_bytes", "format": "{:.0f}",
    "plots": [{"kind": "loglog_slope", "x": "task_options.seq_len",
               "y": "train_step_temp_bytes", "series": "attention", "title": "memory"},
              {"kind": "line", "x": "num_params", "y": "final_eval.loss"}],
}


def _seq_workdir(root):
  trials = []
  for overrides, result in SEQ_TRIALS:
    if isinstance(result, tuple):
      n = tables.field_value(overrides, "task_options.seq_len")
      memory = 3 * n ** 2 if overrides["attention"] == "dense" else 5 * n
      result = _result(*result, train_step_temp_bytes=memory, num_params=n)
    trials.append((overrides, result))
  return make_workdir(root, trials, [SEQ_TABLE])


def test_loglog_plot_fits_each_series_and_writes_pngs(tmp_path):
  workdir = _seq_workdir(tmp_path / "sweep")
  _, trials, results = tables.load(workdir)
  points = tables.plot_points(SEQ_TABLE, SEQ_TABLE["plots"][0], trials, results)
  # The diverged (2048) and missing (dense 1024) trials are skipped.
  assert points == {"dense": [(n, 3.0 * n * n) for n in (128, 256, 512)],
                    "linear": [(n, 5.0 * n) for n in (128, 256, 512, 1024)]}
  labels = tables.plot(SEQ_TABLE, SEQ_TABLE["plots"][0], trials, results,
                       str(tmp_path / "p.png"))
  assert labels == ["dense: slope 2.00", "linear: slope 1.00"]
  # The table's scale applies to its own metric on the y axis (bytes -> KiB), not to others.
  kib = SEQ_TABLE | {"scale": 2 ** -10}
  assert tables.plot_points(kib, kib["plots"][0], trials, results)["linear"] == [
      (n, 5.0 * n / 1024) for n in (128, 256, 512, 1024)]
  assert tables.plot_points(kib, kib["plots"][1], trials, results) == tables.plot_points(
      SEQ_TABLE, SEQ_TABLE["plots"][1], trials, results)
  # x from result.json (num_params) when no trial overrides it.
  assert tables.plot_points(SEQ_TABLE, SEQ_TABLE["plots"][1], trials, results) == {
      "": [(n, 1.0) for n in (128, 256, 512, 128, 256, 512, 1024)]}

  paths = tables.write(workdir, str(tmp_path / "out"), "csv")
  assert [os.path.basename(p) for p in paths] == ["seq.csv", "seq_0.png", "seq_1.png",
                                                  "results.jsonl"]
  for path in paths[1:3]:
    with open(path, "rb") as f:
      data = f.read()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
  with open(paths[0]) as f:
    assert f.read() == ("task_options.seq_len,attention=dense,attention=linear\n"
                        "128,49152,640\n256,196608,1280\n512,786432,2560\n1024,,5120\n"
                        "2048,,diverged\n")


def test_line_plot_ratio_and_categorical_x(tmp_path):
  trials = [({"num_layers": layers, "d_model": d, "pos": pos}, ("completed", acc, loss))
            for layers, d, pos, acc, loss in [(2, 128, "rope", 0.5, 2.0),
                                              (4, 64, "none", 0.25, 3.0),
                                              (2, 128, "none", 0.75, 1.0)]]
  spec = {"name": "shape", "rows": ["num_layers"], "metric": "final_eval.loss",
          "plots": [{"kind": "line", "x": "d_model/num_layers"},
                    {"kind": "line", "x": "pos", "y": "final_eval.accuracy"}]}
  workdir = make_workdir(tmp_path / "sweep", trials, [spec])
  _, trial_list, results = tables.load(workdir)
  assert tables.plot_points(spec, spec["plots"][0], trial_list, results) == {
      "": [(64.0, 2.0), (16.0, 3.0), (64.0, 1.0)]}
  assert tables.plot_points(spec, spec["plots"][1], trial_list, results) == {
      "": [("rope", 0.5), ("none", 0.25), ("none", 0.75)]}
  paths = tables.write(workdir, str(tmp_path / "out"), "markdown")
  assert [os.path.getsize(p) > 1000 for p in paths[1:3]] == [True, True]
  # A baseline is a dashed line at its level, named in the legend (matplotlib lists lines
  # before the series' error bars).
  guess = dict(spec["plots"][1], series="num_layers",
               baselines=[{"y": 0.3, "label": "guess"}])
  tables.check_spec(spec | {"plots": [guess]}, trial_list)
  assert tables.plot(spec, guess, trial_list, results, str(tmp_path / "g.png")) == [
      "guess", "2", "4"]


def test_table_with_no_results_yet_is_all_blank(tmp_path):
  workdir = make_workdir(tmp_path / "s", [({"num_heads": 1, "task": "copy"}, None)],
                         [COPY_LOSS])
  assert tables.render(workdir, "csv") == "num_heads,eval loss\n1,\n"


@pytest.mark.parametrize("change, message", [
    ({"rows": ["num_layers"]}, r"field 'num_layers' is in no trial's overrides"),
    ({"columns": ["attention"]}, r"field 'attention' is in no trial's overrides"),
    ({"filters": {"pos_typo": "rope"}}, r"`filters`: field 'pos_typo'"),
    ({"metric": "final_eval.acc"}, r"metric 'final_eval.acc'.*no 'acc' in final_eval"),
    ({"metric": "final_eval.accuracy.x"}, r"no 'x' in final_eval.accuracy"),
    ({"colums": ["task"]}, r"unknown key\(s\) \['colums'\]"),
    ({"format": "{:.3q}"}, r"`format` '\{:.3q\}' cannot format"),
    ({"published": {"source": "P", "columns": ["a", "b"], "rows": {"1": [1.0]}}},
     r"published row '1' has 1 values for 2 columns"),
    ({"plots": [{"kind": "bar", "x": "num_heads"}]}, r"`kind` must be one of"),
    ({"plots": [{"kind": "line", "x": "num_heads", "series": "seeds"}]},
     r"`series`: field 'seeds'"),
    ({"plots": [{"kind": "line", "x": "num_heads/d_model"}]}, r"`x`: field 'd_model'"),
    ({"plots": [{"kind": "line", "x": "num_heads", "baselines": [{"y": "0.25"}]}]},
     r"each of `baselines` must be \{'y': <finite number>, 'label': <text>\}"),
    ({"plots": [{"kind": "line", "x": "num_heads",
                 "baselines": [{"y": float("nan"), "label": "chance"}]}]},
     r"each of `baselines` must be \{'y': <finite number>"),
    ({"plots": [{"kind": "line", "x": "num_heads", "baselines": 0.25}]},
     r"`baselines` must be a list of"),
])
def test_bad_specs_are_value_errors_naming_the_field(tmp_path, change, message):
  workdir = make_workdir(tmp_path / "s", TRIALS, [HEADS | change])
  with pytest.raises(ValueError, match=message):
    tables.render(workdir, "markdown")


def test_bad_workdir_and_format(tmp_path, workdir):
  with pytest.raises(ValueError, match="no sweep.json"):
    tables.render(str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match=r"format must be one of \['csv', 'latex', 'markdown'\]"):
    tables.render(workdir, "html")
  empty = make_workdir(tmp_path / "empty", TRIALS[:1], [])
  with pytest.raises(ValueError, match="declares no tables"):
    tables.render(empty)


def test_binary_prints_and_writes(tmp_path, workdir):
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.tables", f"--workdir={workdir}", "--format=csv",
       f"--out_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == EXPECTED_CSV
  assert sorted(os.listdir(out)) == ["copy_loss.csv", "heads.csv", "heads_0.png",
                                     "results.jsonl"]
  with open(out / "heads.csv") as f:
    assert f.read() == EXPECTED_CSV.split("\n\n")[0] + "\n"
  # The raw results alone render the same tables, with no workdir.
  again = subprocess.run(
      [sys.executable, "-m", "experiments.tables", f"--workdir={out / 'results.jsonl'}",
       "--format=csv"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert again.returncode == 0, again.stderr
  assert again.stdout == EXPECTED_CSV
  bad = subprocess.run([sys.executable, "-m", "experiments.tables", f"--workdir={workdir}",
                        "--format=html"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "format must be one of" in bad.stderr


def test_write_checks_every_plot_before_writing_anything(tmp_path):
  bad = HEADS | {"plots": [{"kind": "line", "x": "num_heads", "y": "final_eval.bleu"}]}
  workdir = make_workdir(tmp_path / "bad", TRIALS, [COPY_LOSS, bad])
  with pytest.raises(ValueError, match=r"metric 'final_eval.bleu'.*no 'bleu' in final_eval"):
    tables.write(workdir, str(tmp_path / "out"), "markdown")
  assert not os.path.exists(tmp_path / "out")


def test_reads_the_layout_runner_writes(tmp_path):
  # The runner with a stand-in trainer (which writes result.json as the real
  # one does): guards against the two sides drifting apart.
  import ml_collections  # pylint: disable=g-import-not-at-top
  from attention_research.sweep import grid as h  # pylint: disable=g-import-not-at-top
  from attention_research.sweep import runner  # pylint: disable=g-import-not-at-top

  def fake_train(config, workdir):
    result = (_result("diverged", 0, 0) if config.num_heads == 4 else
              _result("completed", config.num_heads / 10, 1.0))
    with open(os.path.join(workdir, "result.json"), "w") as f:
      json.dump(result, f)
    return result

  base = ml_collections.ConfigDict({"num_heads": 1, "task": "order",
                                    "task_options": {"seq_len": 8}})
  grid = h.product([h.sweep("num_heads", [2, 4, 1]), h.sweep("task", ["order", "copy"])])
  spec = {"name": "t", "rows": ["num_heads"], "columns": ["task"],
          "metric": "final_eval.accuracy", "format": "{:.1f}"}
  trials = runner.make_trials(base, grid)
  workdir = str(tmp_path / "sweep")
  # Shard 0 of 2 runs trials 0, 2, 4 (the "order" ones); the "copy" ones stay blank.
  runner.run(trials, workdir, num_shards=2, shard_index=0, tables=[spec], train_fn=fake_train)
  assert tables.render(workdir, "csv") == (
      "num_heads,task=order,task=copy\n2,0.2,\n4,diverged,\n1,0.1,\n")


def test_several_metrics_side_by_side_and_relative_to_a_reference_row(tmp_path):
  """LRA-style columns: one per metric, and each cell divided by the dense row's."""
  trials = [
      ({"attention": "dense", "seq_len": 256}, _result("completed", 0.5, 2.0,
                                                      train_steps_per_s=8.0)),
      ({"attention": "local", "seq_len": 256}, _result("completed", 0.25, 3.0,
                                                      train_steps_per_s=10.0)),
      ({"attention": "local", "seq_len": 512}, _result("completed", 0.75, 1.0,
                                                      train_steps_per_s=6.0)),
      ({"attention": "linear", "seq_len": 512}, ("failed", None, None)),
      ({"attention": "dense", "seq_len": 512}, None),   # reference not run: blank
  ]
  both = {"name": "both", "rows": ["attention", "seq_len"], "columns": [],
          "metric": ["final_eval.accuracy", "train_steps_per_s"],
          "metric_label": ["acc", "steps/s"], "format": ["{:.2f}", "{:.1f}"],
          "scale": [1.0, 0.5]}
  speed = {"name": "speed", "rows": ["attention"], "columns": ["seq_len"],
           "metric": "train_steps_per_s", "format": "{:.3f}",
           "relative_to": {"attention": "dense"}}
  root = make_workdir(tmp_path / "s", trials, [both, speed])
  text = tables.render(root, fmt="csv")
  assert "\"attention, seq_len\",acc,steps/s\n" in text
  assert "\"dense, 256\",0.50,4.0\n" in text and "\"local, 512\",0.75,3.0\n" in text
  assert "\"linear, 512\",failed,failed\n" in text
  # 10 / 8 and 8 / 8 at 256; at 512 dense has no result, so nothing to divide by.
  assert "dense,1.000,\n" in text and "local,1.250,\n" in text and "linear,,failed\n" in text
  with pytest.raises(ValueError, match=r"several metrics need `columns: \[\]`"):
    tables.check_spec(both | {"columns": ["seq_len"]}, [{"overrides": o} for o, _ in trials])
  with pytest.raises(ValueError, match=r"`relative_to` must map row fields"):
    tables.check_spec(speed | {"relative_to": {"seq_len": 256}},
                      [{"overrides": o} for o, _ in trials])
  with pytest.raises(ValueError, match=r"one entry per metric \(2\)"):
    tables.check_spec(both | {"scale": [1.0]}, [{"overrides": o} for o, _ in trials])


def test_relative_to_swaps_only_its_field_and_reports_a_failed_reference(tmp_path):
  """Two row fields: each row is divided by the row with the same task and dense."""
  trials = [
      ({"attention": "dense", "task": "a"}, _result("completed", 0.5, 1.0,
                                                   train_step_temp_bytes=4 * 2 ** 20)),
      ({"attention": "local", "task": "a"}, _result("completed", 0.5, 1.0,
                                                   train_step_temp_bytes=2 ** 20)),
      ({"attention": "dense", "task": "b"}, _result("completed", 0.5, 1.0,
                                                   train_step_temp_bytes=2 * 2 ** 20)),
      ({"attention": "local", "task": "b"}, _result("completed", 0.5, 1.0,
                                                   train_step_temp_bytes=3 * 2 ** 20)),
      ({"attention": "dense", "task": "c"}, ("failed", None, None)),
      ({"attention": "local", "task": "c"}, _result("completed", 0.5, 1.0)),
  ]
  memory = {"name": "memory", "rows": ["attention", "task"], "columns": [],
            "metric": "train_step_temp_bytes", "format": "{:.2f}", "scale": 2 ** -20,
            "relative_to": {"attention": "dense"}}
  absolute = memory | {"name": "absolute", "relative_to": {}}
  root = make_workdir(tmp_path / "s", trials, [memory, absolute])
  text = tables.render(root, fmt="csv")
  relative, plain = text.split("\n\n")
  assert "\"local, a\",0.25\n" in relative and "\"local, b\",1.50\n" in relative
  assert "\"dense, b\",1.00\n" in relative
  assert relative.endswith("\"local, c\",n/a (reference failed)")
  assert "\"local, b\",3.00\n" in plain   # scale turns bytes into MiB
  listed = [{"overrides": o} for o, _ in trials]
  with pytest.raises(ValueError, match=r"`relative_to` attention='Dense' is no trial's value"):
    tables.check_spec(memory | {"relative_to": {"attention": "Dense"}}, listed)
  with pytest.raises(ValueError, match=r"`scale` must be a positive number"):
    tables.check_spec(memory | {"scale": "MiB"}, listed)


def test_fields_may_be_products_or_ratios_of_two_fields():
  overrides = {"num_heads": 4, "head_dim": 16, "task_options": {"seq_len": 128}}
  assert tables.field_value(overrides, "num_heads*head_dim") == 64
  assert tables.field_value(overrides, "task_options.seq_len/num_heads") == 32.0
  assert tables.field_value(overrides, "num_heads*d_model", None) is None
  with pytest.raises(KeyError):
    tables.field_value(overrides, "num_heads*d_model")
  # As a filter: row (A) of Vaswani et al.'s Table 3, heads that split d_model=64,
  # leaves out the trial that shrinks d_k at 8 heads.
  trials = [{"overrides": {"num_heads": h, "head_dim": d}}
            for h, d in [(1, 64), (8, 8), (8, 2), (32, 2)]]
  kept = [t["overrides"] for t in trials
          if tables._in_table(t, ["num_heads"], {"num_heads*head_dim": 64})]
  assert kept == [{"num_heads": 1, "head_dim": 64}, {"num_heads": 8, "head_dim": 8},
                  {"num_heads": 32, "head_dim": 2}]
  # A list is the values allowed: here the ratios 64 and 1.
  kept = [t["overrides"] for t in trials
          if tables._in_table(t, ["num_heads"], {"head_dim/num_heads": [64, 1.0]})]
  assert kept == [{"num_heads": 1, "head_dim": 64}, {"num_heads": 8, "head_dim": 8}]


def test_named_columns_and_the_average_over_them(tmp_path):
  """LRA's Table 1: a column per benchmark (one task at two image sizes is two columns),
  seeds per cell, and an Avg column whose interval is over per-seed averages."""
  def trial(attention, task, seed, accuracy, **options):
    overrides = {"attention": attention, "task": task, "seed": seed}
    if options:
      overrides["task_options"] = options
    return overrides, _result("completed", accuracy, 1.0)
  trials = [
      trial("dense", "listops", 0, 0.25), trial("dense", "listops", 1, 0.375),
      trial("dense", "listops", 2, 0.5),
      trial("dense", "pathfinder", 0, 0.75, image_size=16),
      trial("dense", "pathfinder", 1, 0.625, image_size=16),
      trial("dense", "pathfinder", 2, 1.0, image_size=16),
      trial("dense", "pathfinder", 0, 0.5, image_size=128),     # Path-X: its own column
      trial("local", "listops", 0, 0.125), trial("local", "listops", 1, 0.25),
      trial("local", "pathfinder", 0, 0.5, image_size=16),
      trial("local", "pathfinder", 2, 0.75, image_size=16),     # seeds differ: no interval
      trial("linear", "listops", 0, 0.5),                       # no pathfinder: Avg blank
      trial("dense", "copy", 0, 0.5),                           # in no column: left out
  ]
  spec = {"name": "lra", "rows": ["attention"], "average": "Avg", "format": "{:.2f}",
          "scale": 100, "metric": "final_eval.accuracy",
          "columns": {"ListOps": {"task": "listops"},
                      "Pathfinder": {"task": "pathfinder", "task_options.image_size": 16},
                      "Path-X": {"task": "pathfinder", "task_options.image_size": 128},
                      "Text": {"task": "lra_text"}},
          "published": {"source": "LRA", "columns": ["Avg"], "rows": {"Reformer": [50.67]}}}
  text = tables.render(make_workdir(tmp_path / "s", trials, [spec]), fmt="csv")
  header, dense, local, linear, reformer = text.split("\n")[:5]
  assert header == "attention,ListOps,Pathfinder,Path-X,Text,Avg,LRA: Avg"
  # By hand: listops 0.25, 0.375, 0.5 have mean 0.375 and std 0.125; t(0.975, 2) =
  # 4.302653, so the half-width is 4.302653 * 0.125 / sqrt(3) = 0.310521 (31.05%).
  # pathfinder 0.75, 0.625, 1.0: mean 0.791667, std 0.190941, half 0.474324.
  # The Avg is over every named column: blank while Text has not run.
  assert dense == "dense,37.50 ± 31.05 (n=3),79.17 ± 47.43 (n=3),50.00,,,"
  assert local == "local,18.75 ± 79.41 (n=2),62.50 ± 158.83 (n=2),,,,"
  assert linear == "linear,50.00,,,,,"
  assert reformer == "Reformer,,,,,,50.67"

  # Only the columns that ran (ListOps and Pathfinder): the Avg of the column means,
  # with an interval over the per-seed averages (0.5, 0.5, 0.75) where the seeds match.
  two = spec | {"columns": {k: spec["columns"][k] for k in ("ListOps", "Pathfinder")}}
  text = tables.render(make_workdir(tmp_path / "t", trials, [two]), fmt="csv")
  dense, local = text.split("\n")[1:3]
  # (0.375 + 0.791667) / 2 = 0.583333; per seed (0.5, 0.5, 0.75): std 0.144338, half
  # 4.302653 * 0.144338 / sqrt(3) = 0.358554.
  assert dense.endswith(",58.33 ± 35.86 (n=3),")
  # local ran seeds 0, 1 and 0, 2: the Avg (0.1875 + 0.625) / 2 has no interval.
  assert local.endswith(",40.62 (n=2),")
  # average_over: the Avg of the named columns only (Path-X and Text left out), and
  # a diverged trial in one of them is named in the Avg too.
  over = spec | {"average_over": ["ListOps", "Pathfinder"]}
  diverged = trials + [({"attention": "dense", "task": "listops", "seed": 3},
                        _result("diverged", None, None))]
  text = tables.render(make_workdir(tmp_path / "u", diverged, [over]), fmt="csv")
  dense = text.split("\n")[1]
  assert dense.endswith(",58.33 ± 35.86 (n=3; 1 diverged),")

  # A plot with a series per named column: each point in its column's series (the copy
  # trial in none), the means and intervals those of the cells.
  plot_spec = {"kind": "line", "x": "attention", "series": "columns"}
  listed = [{"id": f"{i:010x}", "name": str(i), "overrides": o} for i, (o, _) in
            enumerate(trials)]
  results = {f"{i:010x}": r for i, (_, r) in enumerate(trials)}
  points = tables.plot_points(spec, plot_spec, listed, results)
  assert sorted(points) == ["ListOps", "Path-X", "Pathfinder"]
  assert sorted(points["ListOps"]) == [("dense", 25.0), ("dense", 37.5), ("dense", 50.0),
                                       ("linear", 50.0), ("local", 12.5), ("local", 25.0)]
  path = str(tmp_path / "lra.png")
  assert tables.plot(spec | {"plots": [plot_spec]}, plot_spec, listed, results, path) == [
      "ListOps", "Pathfinder", "Path-X"]
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  with pytest.raises(ValueError, match=r"`series` 'columns' needs named `columns`"):
    tables.check_spec(spec | {"columns": ["task"], "average": None, "plots": [plot_spec]},
                      listed)

  with pytest.raises(ValueError, match=r"named `columns` map a header to the overrides"):
    tables.check_spec(spec | {"columns": {"ListOps": "listops"}}, listed)
  with pytest.raises(ValueError, match=r"column 'Text': field 'task_name' is in no trial"):
    tables.check_spec(spec | {"columns": {"Text": {"task_name": "x"}}}, listed)
  with pytest.raises(ValueError, match=r"`average_over` lists named columns to average"):
    tables.check_spec(spec | {"average_over": ["Image"]}, listed)
  with pytest.raises(ValueError, match=r"named `columns` map a header to the overrides"):
    tables.check_spec(spec | {"columns": {"All": {}}}, listed)
  with pytest.raises(ValueError, match=r"`average` needs `columns`"):
    tables.check_spec(spec | {"relative_to": {"attention": "dense"}}, listed)


def test_raw_results_hold_every_trial_and_render_the_tables_alone(tmp_path, workdir):
  # A trial that did not sweep its seed takes it from its config.json.
  with open(os.path.join(workdir, "trials", f"{0:010x}", "config.json"), "w") as f:
    json.dump({"seed": 7}, f)
  paths = tables.write(workdir, str(tmp_path / "out"), "markdown")
  raw = str(tmp_path / "out" / "results.jsonl")
  assert raw in paths
  with open(raw) as f:
    lines = [json.loads(line) for line in f]
  assert lines[0] == {"sweep": {"config": "configs/sweeps/fake.py",
                                "tables": [HEADS, COPY_LOSS]}}
  assert len(lines) == 1 + len(TRIALS)
  for index, ((overrides, result), line) in enumerate(zip(TRIALS, lines[1:])):
    assert line["id"] == f"{index:010x}" and line["overrides"] == overrides
    if result is None:
      assert line["status"] is None and line["result"] is None
    else:
      assert line["status"] == result[0]
      assert line["result"] == _result(*result)
  assert lines[1]["seed"] == 7 and lines[5]["seed"] == 0 and lines[6]["seed"] == 1
  assert lines[2]["seed"] is None   # neither swept nor in a config.json
  assert tables.render(raw) == tables.render(workdir)
  with open(tmp_path / "bad.jsonl", "w") as f:
    f.write('{"trial": 1}\n')
  with pytest.raises(ValueError, match=r"not a sweep's results file"):
    tables.render(str(tmp_path / "bad.jsonl"))
  with pytest.raises(ValueError, match=r"does not exist"):
    tables.render(str(tmp_path / "none.jsonl"))
