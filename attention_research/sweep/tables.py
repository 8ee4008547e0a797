"""Paper-style tables and PNG plots from a sweep's results, beside the published figures.

    print(tables.render("runs/aiayn_table3", fmt="markdown"))
    tables.write("runs/aiayn_table3", "docs/results/aiayn_table3", fmt="markdown")
    print(tables.render("docs/results/aiayn_table3/results.jsonl"))   # no workdir needed

A sweep config's `get_tables(config)` declares its tables; the runner records
them in DIR/sweep.json with every trial, and each trial that ran has
DIR/trials/<id>/result.json. `write` also writes the raw results beside the
tables, results.jsonl: a first line {"sweep": {"config": <file>, "tables":
[...]}}, then one line per trial {"index", "id", "name", "overrides", "seed",
"status", "result"} (result: its whole result.json, with the final metrics,
step time, memory and wall time; null if it has not run), so that anyone can
render or recompute the tables from that file alone. A table spec (a JSON-able dict):

    {"name": "table3_heads",               # file stem: table3_heads.md, table3_heads_0.png
     "caption": "...",                     # says when the task differs from the paper's
     "rows": ["num_heads"],                # override fields keying the rows
     "columns": ["task"],                  # ... and the columns; [] = one metric column;
                                           # or named columns, each the overrides that put
                                           # a trial in it (the first that matches):
                                           #   {"ListOps": {"task": "listops"},
                                           #    "Path-X": {"task": "pathfinder",
                                           #               "task_options.image_size": 128}}
     "average": "Avg",                     # optional: a column of the mean over our
                                           # columns (LRA's Avg); blank until all have run;
     "average_over": ["ListOps", "Text"],  # optional: only these columns (default: all)
     "metric": "final_eval.accuracy",      # dotted path into result.json
     "metric_label": "eval accuracy",      # optional (default: the metric path)
     "format": "{:.3f}",                   # optional (default "{:.4g}")
     # or, with "columns": [], several metrics side by side, one column each:
     #   "metric": ["final_eval.perplexity", "num_params"],
     #   "metric_label": ["PPL", "params"], "format": ["{:.3f}", "{:,.0f}"]
     "scale": 2 ** -20,                    # optional: multiply before formatting (bytes ->
                                           # MiB); a list with several metrics
     "filters": {"pos": "rope"},           # optional: only trials with these overrides
                                           # (a list: any of its values, {"seed": [1, 2]})
     "relative_to": {"attention": "dense"},  # optional: each cell / the same cell of the row
                                           # with these row-field values (LRA's "x faster")
     "published": {"source": "Vaswani et al. 2017, Table 3",
                   "columns": ["PPL (dev)", "BLEU (dev)"],
                   "rows": {"1": [5.29, 24.9], "4": [5.00, 25.5]}},   # by row label
     "plots": [{"kind": "line", "x": "num_heads", "y": "final_eval.loss",
                "series": "task", "logx": True, "logy": False, "title": "...",
                # optional: gray horizontal lines (dashed, dotted, ...), each a
                # level worth reading the series against (chance, a guessing strategy)
                "baselines": [{"y": 0.25, "label": "guess one of the 4 values"}]},
               {"kind": "loglog_slope", "x": "task_options.seq_len",
                "y": "train_step_temp_bytes", "series": "attention"}]}

A field is an override key ("num_heads", "task_options.seq_len"), a path
into a dict-valued override ("task_options.seq_len" when the grid set
"task_options" whole), or the product or ratio of two fields
("num_heads*head_dim": 64 as a filter keeps the trials whose heads split a
width of 64). A trial lacking a row or column field is not in that
table. Rows and columns come in the order their values first appear in the
trial list; a row label is the row's values joined by ", ", a column header
is "field=value" (joined by ", ").

What a cell shows:
  blank              no trial in the cell has a result.json yet (not run, or running)
  0.912              the one completed trial's metric
  0.912 ± 0.021 (n=3)   the mean over the cell's 3 completed trials (seeds, say) and
                     the half-width of its 95% interval (Student's t, n - 1 degrees
                     of freedom: t * sample std / sqrt(n))
  0.912 (n=1; 1 diverged)   some trials of the cell did not complete
  diverged, failed   no trial of the cell completed: their status (with (n=k) if k > 1)
  n/a                the completed trial's result has the metric, but as null
  n/a (reference failed)   with relative_to: the reference row's cell ended without a
                     value (blank while it has not run)

With relative_to, a cell is the ratio of the two means, without an interval.
An average cell is the mean of the row's column means; its interval is over
per-seed averages, when every column of the row ran the same seeds (the
trials' "seed" override), else it has none.

Published figures sit in their own columns headed "<source>: <column>",
never mixed with ours; our rows the paper lacks are blank there, and rows
only the paper has come after ours, blank in our columns.

Plots (Agg backend, no display needed) skip trials without a completed
result. "line" plots the mean y at each x per series (a non-numeric x, e.g.
positional encoding names, is spaced evenly in first-appearance order), with
error bars of the same 95% interval where an x has several trials.
"loglog_slope" draws log-log axes and fits log y = a + b log x by least
squares per series over every point (`tabulate.loglog_fit`, the benchmark's
fit too), with "slope b" in the legend: the exponent of time or memory in
sequence length (2 for dense attention's L x L, 1 for the efficient
variants), the check of the O(L^2) claim. A plot's
series may be "columns": one per named column of its table. Its
x may also be a ratio of two fields ("d_model/num_layers": the aspect ratio
of Kaplan et al. 2020, Fig. 5) or, when no trial overrides it, a result.json
path ("num_params").
"""

import itertools
import json
import math
import os

import numpy as np
from scipy import stats

from attention_research import storage
from attention_research import tabulate

FORMATS = {"markdown": "md", "latex": "tex", "csv": "csv"}
PLOT_KINDS = ("line", "loglog_slope")
COLUMNS_SERIES = "columns"  # a plot's series: one per named column of its table
_TABLE_KEYS = ("name", "caption", "rows", "columns", "average", "average_over", "metric",
               "metric_label", "format", "scale", "filters", "relative_to", "published",
               "plots")
CONFIDENCE = 0.95
_PLOT_KEYS = ("kind", "x", "y", "series", "logx", "logy", "title", "baselines")
_MISSING = object()   # a field or key that is not there
_REQUIRED = object()  # field_value without a default: raise


# ----------------------------------------------------------------- reading

RESULTS_FILE = "results.jsonl"


def load(workdir):
  """(table specs, trials, {trial id: result dict or None}) from a sweep's workdir, or
  from a results.jsonl file that `write` left beside the tables."""
  if workdir.endswith(".jsonl"):
    return _load_results_file(workdir)
  try:
    sweep = storage.read_json(os.path.join(workdir, "sweep.json"))
  except FileNotFoundError:
    raise ValueError(f"workdir {workdir!r} has no sweep.json: not a sweep directory (run "
                     f"experiments.sweep into it first)") from None
  trials = sweep.get("trials", [])
  # Read here rather than through runner.read_result: that would import the
  # trainer (and JAX) just to read JSON files.
  results = {}
  for trial in trials:
    result_path = os.path.join(workdir, "trials", trial["id"], "result.json")
    try:
      results[trial["id"]] = storage.read_json(result_path)
    except FileNotFoundError:
      results[trial["id"]] = None
  return sweep.get("tables", []), trials, results


def raw_results(workdir, loaded=None):
  """The text of results.jsonl for a sweep's workdir (see the module docstring);
  `loaded`: what load(workdir) returned, when the caller has read it already."""
  sweep = storage.read_json(os.path.join(workdir, "sweep.json"))
  specs, trials, results = loaded or load(workdir)
  lines = [{"sweep": {"config": sweep.get("config"), "tables": specs}}]
  for trial in trials:
    result = results[trial["id"]]
    seed = trial["overrides"].get("seed")
    if seed is None:  # not swept: the trial's config has it
      try:
        seed = storage.read_json(
            os.path.join(workdir, "trials", trial["id"], "config.json")).get("seed")
      except FileNotFoundError:
        pass
    lines.append({"index": trial.get("index"), "id": trial["id"], "name": trial["name"],
                  "overrides": trial["overrides"], "seed": seed,
                  "status": result.get("status") if result else None, "result": result})
  return "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)


def _load_results_file(path):
  try:
    lines = [json.loads(line) for line in storage.path(path).read_text().splitlines() if line]
  except FileNotFoundError:
    raise ValueError(f"results file {path!r} does not exist") from None
  if not lines or "sweep" not in lines[0]:
    raise ValueError(f"{path!r} is not a sweep's results file: its first line must be "
                     f"{{\"sweep\": {{\"config\": ..., \"tables\": [...]}}}} (tables.write "
                     f"writes it as {RESULTS_FILE})")
  trials = [{k: line[k] for k in ("index", "id", "name", "overrides")} for line in lines[1:]]
  results = {line["id"]: line["result"] for line in lines[1:]}
  return lines[0]["sweep"].get("tables", []), trials, results


def render(workdir, fmt="markdown"):
  """Every table of the sweep in `fmt` (markdown, latex or csv), one after another."""
  _check_format(fmt)
  specs, trials, results = load(workdir)
  _check_has_tables(workdir, specs)
  return "\n\n".join(format_table(build_table(s, trials, results), fmt) for s in specs) + "\n"


def write(workdir, out_dir, fmt="markdown"):
  """Writes <name>.<md|tex|csv> and <name>_<i>.png per table into out_dir, and (from a
  workdir) the raw results, results.jsonl; returns the paths."""
  _check_format(fmt)
  specs, trials, results = load(workdir)
  _check_has_tables(workdir, specs)
  # Every table and plot is checked before any file is written: no half-written out_dir.
  built = [build_table(spec, trials, results) for spec in specs]
  for spec in specs:
    for plot_spec in spec.get("plots", []):
      plot_points(spec, plot_spec, trials, results)
  storage.path(out_dir).mkdir(parents=True, exist_ok=True)
  paths = []
  for spec, table in zip(specs, built):
    path = os.path.join(out_dir, f"{spec['name']}.{FORMATS[fmt]}")
    storage.write_text(path, format_table(table, fmt) + "\n")
    paths.append(path)
    for i, plot_spec in enumerate(spec.get("plots", [])):
      path = os.path.join(out_dir, f"{spec['name']}_{i}.png")
      plot(spec, plot_spec, trials, results, path)
      paths.append(path)
  if not workdir.endswith(".jsonl"):
    path = os.path.join(out_dir, RESULTS_FILE)
    storage.write_text(path, raw_results(workdir, (specs, trials, results)))
    paths.append(path)
  return paths


def _check_format(fmt):
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")


def _check_has_tables(workdir, specs):
  if not specs:
    raise ValueError(f"{workdir}/sweep.json declares no tables: add get_tables(config) to the "
                     f"sweep config and run experiments.sweep again (finished trials are kept)")


# ----------------------------------------------------------- fields, metrics

def field_value(overrides, field, default=_REQUIRED):
  """The trial's value of `field`: an override key, a path into a dict-valued override,
  or the product or ratio of two such fields ("num_heads*head_dim", "d_model/num_layers")."""
  if field in overrides:
    return overrides[field]
  for op in ("*", "/"):
    if op in field:
      a, b = (field_value(overrides, part, _MISSING) for part in field.split(op, 1))
      if _MISSING not in (a, b):
        return a * b if op == "*" else a / b
      if default is _REQUIRED:
        raise KeyError(field)
      return default
  parts = field.split(".")
  for i in range(len(parts) - 1, 0, -1):
    node = overrides.get(".".join(parts[:i]), _MISSING)
    for part in parts[i:]:
      node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
    if node is not _MISSING:
      return node
  if default is _REQUIRED:
    raise KeyError(field)
  return default


def metric_value(result, metric, trial_name="?"):
  """The value at the dotted path `metric` in a result.json dict."""
  node = result
  for i, part in enumerate(metric.split(".")):
    if not isinstance(node, dict) or part not in node:
      where = ".".join(metric.split(".")[:i]) or "result.json"
      keys = sorted(node) if isinstance(node, dict) else type(node).__name__
      raise ValueError(f"metric {metric!r}: trial {trial_name!r}'s result has no {part!r} in "
                       f"{where} (it has {keys})")
    node = node[part]
  return node


def _check_fields(fields, trials, where):
  for field in fields:
    if not any(_has(t, field) for t in trials):
      known = sorted({k for t in trials for k in t["overrides"]})
      raise ValueError(f"{where}: field {field!r} is in no trial's overrides (fields the "
                       f"sweep sets: {known})")


def _has(trial, field):
  return field_value(trial["overrides"], field, _MISSING) is not _MISSING


def row_label(values):
  """A table row's label: its row fields' values as trial names print them, joined by ", "
  (the key of a sweep config's published rows)."""
  return ", ".join(_label(v) for v in values)


def _label(value):
  # As the trial names print it (grid.trial_name), so published row keys match.
  return f"{value:g}" if isinstance(value, float) else str(value)


def _key(values):
  return json.dumps(values, sort_keys=True, default=repr)


def _in_table(trial, fields, filters):
  overrides = trial["overrides"]
  if any(field_value(overrides, f, _MISSING) is _MISSING for f in fields):
    return False
  return all(_matches(field_value(overrides, f, _MISSING), v) for f, v in filters.items())


def _matches(value, wanted):
  # A list in `filters` is the values allowed.
  return value in wanted if isinstance(wanted, list) else value == wanted


# -------------------------------------------------------------------- tables

def _as_list(value, default, length):
  if isinstance(value, (list, tuple)):
    return list(value)
  return [default if value is None else value] * length


def _metrics(spec):
  """[(path, label, format, scale)] of a spec: one, or one per column when "metric" is a list."""
  name = spec.get("name")
  paths = spec["metric"] if isinstance(spec["metric"], (list, tuple)) else [spec["metric"]]
  labels = _as_list(spec.get("metric_label"), None, len(paths))
  formats = _as_list(spec.get("format"), "{:.4g}", len(paths))
  scales = _as_list(spec.get("scale"), 1.0, len(paths))
  if not len(labels) == len(formats) == len(scales) == len(paths):
    raise ValueError(f"table {name!r}: `metric_label`, `format` and `scale` lists need one "
                     f"entry per metric ({len(paths)})")
  for k in scales:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
      raise ValueError(f"table {name!r}: `scale` must be a positive number (or one per "
                       f"metric), got {k!r}")
  return [(p, l if l is not None else p, f, float(k))
          for p, l, f, k in zip(paths, labels, formats, scales)]


def _main_metric(spec):
  return _metrics(spec)[0][0]


def check_spec(spec, trials):
  """Raises a ValueError naming the first bad key of a table spec."""
  if not isinstance(spec, dict):
    raise ValueError(f"a table spec must be a dict, got {spec!r:.200}")
  name = spec.get("name")
  unknown = sorted(set(spec) - set(_TABLE_KEYS))
  if unknown:
    raise ValueError(f"table {name!r}: unknown key(s) {unknown}; allowed: {list(_TABLE_KEYS)}")
  for key in ("name", "rows", "metric"):
    if key not in spec:
      raise ValueError(f"table {name!r}: `{key}` is required")
  if not isinstance(name, str) or not name or os.sep in name:
    raise ValueError(f"table `name` must be a non-empty file stem, got {name!r}")
  if not spec["rows"]:
    raise ValueError(f"table {name!r}: `rows` must name at least one override field")
  metrics = _metrics(spec)
  if not metrics or not all(isinstance(m, str) and m for m, _, _, _ in metrics):
    raise ValueError(f"table {name!r}: `metric` must be a dotted path into result.json or a "
                     f"non-empty list of them, got {spec['metric']!r}")
  if len(metrics) > 1 and spec.get("columns"):
    raise ValueError(f"table {name!r}: several metrics need `columns: []` (they are the "
                     f"columns); got columns {spec['columns']}")
  columns = spec.get("columns", [])
  if isinstance(columns, dict):
    for header, column_filters in columns.items():
      if not isinstance(header, str) or not isinstance(column_filters, dict) or not column_filters:
        raise ValueError(f"table {name!r}: named `columns` map a header to the overrides "
                         f"that select its trials, e.g. {{'ListOps': {{'task': 'listops'}}}}; "
                         f"got {header!r}: {column_filters!r:.200}")
      _check_fields(list(column_filters), trials, f"table {name!r} column {header!r}")
  elif not isinstance(columns, (list, tuple)):
    raise ValueError(f"table {name!r}: `columns` must be a list of override fields or a dict "
                     f"of named columns, got {columns!r:.200}")
  average = spec.get("average")
  if average is not None:
    if not isinstance(average, str) or not average:
      raise ValueError(f"table {name!r}: `average` is the average column's header, a "
                       f"non-empty string, got {average!r}")
    if not columns or spec.get("relative_to"):
      raise ValueError(f"table {name!r}: `average` needs `columns` to average over and no "
                       f"`relative_to`")
  over = spec.get("average_over")
  if over is not None:
    headers = list(columns) if isinstance(columns, dict) else None
    if average is None or headers is None or not over or set(over) - set(headers):
      raise ValueError(f"table {name!r}: `average_over` lists named columns to average, with "
                       f"`average` set; named columns: {headers}, got {over!r}")
  for _, _, fmt, _ in metrics:
    try:
      fmt.format(1.0)
    except (ValueError, IndexError, KeyError) as e:
      raise ValueError(f"table {name!r}: `format` {fmt!r} cannot format a number "
                       f"({e}); e.g. '{{:.3f}}'") from e
  _check_fields(list(spec["rows"]) + _column_fields(spec), trials, f"table {name!r}")
  _check_fields(list(spec.get("filters", {})), trials, f"table {name!r} `filters`")
  relative_to = spec.get("relative_to", {})
  if not isinstance(relative_to, dict) or not set(relative_to) <= set(spec["rows"]):
    raise ValueError(f"table {name!r}: `relative_to` must map row fields ({spec['rows']}) to "
                     f"the reference row's values, got {relative_to!r}")
  for field, value in relative_to.items():  # a typo would blank every cell
    values = {_key([field_value(t["overrides"], field)]) for t in trials if _has(t, field)}
    if _key([value]) not in values:
      raise ValueError(f"table {name!r}: `relative_to` {field}={value!r} is no trial's value "
                       f"(values: {sorted((json.loads(v)[0] for v in values), key=str)})")
  published = spec.get("published")
  if published is not None:
    for key in ("source", "columns", "rows"):
      if key not in published:
        raise ValueError(f"table {name!r}: `published` needs `{key}`")
    for label, values in published["rows"].items():
      if len(values) != len(published["columns"]):
        raise ValueError(f"table {name!r}: published row {label!r} has {len(values)} values "
                         f"for {len(published['columns'])} columns {published['columns']}")
  for i, plot_spec in enumerate(spec.get("plots", [])):
    _check_plot(spec, plot_spec, i, trials)


def _column_fields(spec):
  """The override fields whose values make the columns ([] for named columns)."""
  columns = spec.get("columns", [])
  return [] if isinstance(columns, dict) else list(columns)


def _named_column(trial, columns):
  """The header of the first named column whose overrides the trial has, or None."""
  for header, column_filters in columns.items():
    if all(field_value(trial["overrides"], f, _MISSING) == v for f, v in column_filters.items()):
      return header
  return None


def build_table(spec, trials, results):
  """The table of one spec: {"name", "caption", "header", "rows", "note", "num_ours"}.

  rows are lists of cell strings, the row label first; num_ours counts the
  columns before the published ones (the label column included).
  """
  check_spec(spec, trials)
  row_fields, col_fields = list(spec["rows"]), _column_fields(spec)
  named = spec.get("columns") if isinstance(spec.get("columns"), dict) else None
  members = [t for t in trials
             if _in_table(t, row_fields + col_fields, spec.get("filters", {}))]
  row_keys, col_keys, cells = {}, {}, {}
  if named:  # every named column, in the spec's order, run or not
    col_keys = {_key([header]): header for header in named}
  for t in members:
    rv = [field_value(t["overrides"], f) for f in row_fields]
    if named:
      header = _named_column(t, named)
      if header is None:
        continue
      ck = _key([header])
    else:
      cv = [field_value(t["overrides"], f) for f in col_fields]
      ck = _key(cv)
      col_keys.setdefault(ck, ", ".join(f"{f}={_label(v)}" for f, v in zip(col_fields, cv)))
    rk = _key(rv)
    row_keys.setdefault(rk, row_label(rv))
    cells.setdefault((rk, ck), []).append(t)
  metrics = _metrics(spec)
  # (cell key, path, label, format, scale) per column: one per column value, or
  # one per metric.
  if col_fields or named:
    columns = [(ck, *metrics[0]) for ck in col_keys]
  else:
    col_keys = {str(i): label for i, (_, label, _, _) in enumerate(metrics)}
    columns = [(_key([]), *metric) for metric in metrics]

  relative_to = dict(spec.get("relative_to", {}))
  average = spec.get("average")
  rows, any_count = [], False
  for rk, label in row_keys.items():
    row = [label]
    if relative_to:  # the same row with the reference value(s) in place
      row_values = dict(zip(row_fields, json.loads(rk)))
      ref_key = _key([relative_to.get(f, row_values[f]) for f in row_fields])
    for ck, metric, _, fmt, scale in columns:
      reference = cells.get((ref_key, ck), []) if relative_to else None
      text = _cell(cells.get((rk, ck), []), results, metric, fmt, reference, scale)
      row.append(text)
      any_count |= "(n=" in text
    if average:
      _, metric, _, fmt, scale = columns[0]
      over = spec.get("average_over")
      averaged = [cells.get((rk, ck), []) for ck, *_ in columns
                  if over is None or col_keys[ck] in over]
      text = _average_cell(averaged, results, metric, fmt, scale)
      row.append(text)
      any_count |= "(n=" in text
    rows.append(row)
  our_headers = list(col_keys.values()) + ([average] if average else [])
  header = [", ".join(row_fields)] + our_headers

  published = spec.get("published")
  if published is not None:
    header += [f"{published['source']}: {c}" for c in published["columns"]]
    paper = {str(k): v for k, v in published["rows"].items()}
    for row in rows:
      row += [_published_cell(v) for v in paper.get(row[0], [None] * len(published["columns"]))]
    for label, values in paper.items():
      if label not in row_keys.values():
        rows.append([label] + [""] * len(our_headers) + [_published_cell(v) for v in values])
  note = ""
  if any_count:
    note = (f"(n=k): over the cell's k completed trials (or, after a status, the k trials "
            f"that ended so); mean ± the half-width of its {CONFIDENCE:.0%} interval "
            f"(Student's t){'; ratios are of the means, without an interval' if relative_to else ''}.")
  return {"name": spec["name"], "caption": spec.get("caption", ""), "header": header,
          "rows": rows, "note": note, "num_ours": 1 + len(our_headers)}


def interval(values):
  """(mean, half-width of the CONFIDENCE interval of the mean by Student's t); the
  half-width is None for fewer than two values."""
  values = np.asarray(values, dtype=np.float64)
  mean = float(values.mean())
  if len(values) < 2:
    return mean, None
  t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1))
  return mean, t * float(values.std(ddof=1)) / math.sqrt(len(values))


def _with_notes(text, notes):
  return f"{text} ({'; '.join(notes)})" if notes else text


def _cell(cell_trials, results, metric, fmt, reference=None, scale=1.0):
  """What one cell shows for its trials (see the module docstring).

  With `reference` (the reference row's trials in this column), the mean is
  divided by the reference's mean (so `scale` cancels); blank when the
  reference has not run yet, "n/a (reference <status>)" when it ended
  without a value.
  """
  values, unsuccessful = _cell_values(cell_trials, results, metric)
  if not values:
    return ", ".join(s if c == 1 else f"{s} (n={c})" for s, c in unsuccessful.items())
  notes = [f"n={len(values)}"] if len(values) > 1 or unsuccessful else []
  notes += [f"{c} {s}" for s, c in unsuccessful.items()]
  values = [v for _, v in values]
  if reference is not None:
    reference_values, reference_ended = _cell_values(reference, results, metric)
    reference_mean = float(np.mean([v for _, v in reference_values] or [0.0]))
    if reference_mean == 0.0:
      return f"n/a (reference {', '.join(reference_ended)})" if reference_ended else ""
    return _with_notes(fmt.format(float(np.mean(values)) / reference_mean), notes)
  mean, half = interval(values)
  text = fmt.format(mean * scale)
  if half is not None:
    text += " ± " + fmt.format(half * scale)
  return _with_notes(text, notes)


def _average_cell(row_cells, results, metric, fmt, scale):
  """The mean of a row's column means; blank until every column has a value. Its
  interval is over the per-seed averages when every column ran the same seeds; n is
  the fewest completed trials of a column, and trials that ended otherwise are named."""
  ended = [_cell_values(c, results, metric) for c in row_cells]
  columns = [values for values, _ in ended]
  if not all(columns):
    return ""
  mean = float(np.mean([np.mean([v for _, v in c]) for c in columns]))
  by_seed = [{t["overrides"].get("seed"): v for t, v in c} for c in columns]
  seeds = set(by_seed[0])
  counts = {len(c) for c in columns}
  half = None
  if (len(counts) == 1 and None not in seeds and len(seeds) == len(columns[0])
      and all(set(s) == seeds for s in by_seed)):
    per_seed = [np.mean([s[seed] for s in by_seed]) for seed in sorted(seeds)]
    _, half = interval(per_seed)
  text = fmt.format(mean * scale)
  if half is not None:
    text += " ± " + fmt.format(half * scale)
  unsuccessful = {}
  for _, statuses in ended:
    for status, count in statuses.items():
      unsuccessful[status] = unsuccessful.get(status, 0) + count
  n = min(counts)
  notes = [f"n={n}"] if n > 1 or unsuccessful else []
  return _with_notes(text, notes + [f"{c} {s}" for s, c in unsuccessful.items()])


def _cell_values(cell_trials, results, metric):
  """([(trial, metric) of each completed trial], {status: count} of the others that ended)."""
  values, unsuccessful = [], {}
  for t in cell_trials:
    result = results.get(t["id"])
    if result is None:
      continue
    status = result.get("status", "failed")
    if status == "completed":
      value = metric_value(result, metric, t["name"])
      if value is None:
        status = "n/a"
      else:
        values.append((t, float(value)))
        continue
    unsuccessful[status] = unsuccessful.get(status, 0) + 1
  return values, unsuccessful


def _published_cell(value):
  if value is None:
    return ""
  return _label(value)


# ---------------------------------------------------------------- formatting

def format_table(table, fmt):
  """One built table as Markdown, LaTeX or CSV text (no trailing newline)."""
  _check_format(fmt)
  return {"markdown": _markdown, "latex": _latex, "csv": _csv}[fmt](table)


def _markdown(table):
  lines = [f"**{table['name']}**" + (f": {table['caption']}" if table["caption"] else ""), "",
           tabulate.markdown_table(table["header"], table["rows"],
                                   align="l" + "r" * (len(table["header"]) - 1))]
  if table["note"]:
    lines += ["", f"*{table['note']}*"]
  return "\n".join(lines)


def _latex(table):
  ours, total = table["num_ours"], len(table["header"])
  # A rule between our columns and the paper's keeps the two apart at a glance.
  columns = "l" + "r" * (ours - 1) + ("|" + "r" * (total - ours) if total > ours else "")
  tex = tabulate.latex_escape
  caption = tex(table["caption"]) + (" " + tex(table["note"]) if table["note"] else "")
  return "\n".join(["% needs \\usepackage{booktabs}",
                    r"\begin{table}[t]", r"\centering",
                    rf"\caption{{{caption}}}", rf"\label{{tab:{tex(table['name'])}}}",
                    tabulate.latex_tabular(table["header"], table["rows"], columns),
                    r"\end{table}"])


def _csv(table):
  return tabulate.csv_table(table["header"], table["rows"])


# --------------------------------------------------------------------- plots

# The fit of the "loglog_slope" plots, by the name this module has always given it.
loglog_slope = tabulate.loglog_fit


def _x_parts(x):
  return x.split("/")


def _check_plot(spec, plot_spec, i, trials):
  where = f"table {spec['name']!r} plot {i}"
  if not isinstance(plot_spec, dict):
    raise ValueError(f"{where}: must be a dict, got {plot_spec!r:.200}")
  unknown = sorted(set(plot_spec) - set(_PLOT_KEYS))
  if unknown:
    raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {list(_PLOT_KEYS)}")
  if plot_spec.get("kind") not in PLOT_KINDS:
    raise ValueError(f"{where}: `kind` must be one of {list(PLOT_KINDS)}, "
                     f"got {plot_spec.get('kind')!r}")
  if "x" not in plot_spec:
    raise ValueError(f"{where}: `x` is required")
  parts = _x_parts(plot_spec["x"])
  if len(parts) > 2:
    raise ValueError(f"{where}: `x` {plot_spec['x']!r}: at most one '/' (a ratio of two fields)")
  # A single x that no trial overrides is a result.json path, checked against the results.
  if len(parts) == 2:
    _check_fields(parts, trials, f"{where} `x`")
  if plot_spec.get("series") == COLUMNS_SERIES:
    if not isinstance(spec.get("columns"), dict):
      raise ValueError(f"{where}: `series` {COLUMNS_SERIES!r} needs named `columns` (a dict)")
  elif plot_spec.get("series"):
    _check_fields([plot_spec["series"]], trials, f"{where} `series`")
  baselines = plot_spec.get("baselines", [])
  if not isinstance(baselines, list):
    raise ValueError(f"{where}: `baselines` must be a list of {{'y': <number>, 'label': "
                     f"<text>}}, got {baselines!r:.200}")
  for baseline in baselines:
    if (not isinstance(baseline, dict) or set(baseline) != {"y", "label"}
        or not isinstance(baseline["y"], (int, float)) or isinstance(baseline["y"], bool)
        or not math.isfinite(baseline["y"]) or not isinstance(baseline["label"], str)):
      raise ValueError(f"{where}: each of `baselines` must be {{'y': <finite number>, "
                       f"'label': <text>}}, got {baseline!r:.200}")


def _plot_x(plot_spec, trial, result):
  x = plot_spec["x"]
  if "/" in x:
    num, den = (field_value(trial["overrides"], p) for p in _x_parts(x))
    return float(num) / float(den)
  value = field_value(trial["overrides"], x, _MISSING)
  if value is _MISSING:
    try:
      value = metric_value(result, x, trial["name"])
    except ValueError as e:
      raise ValueError(f"plot `x` {x!r} is neither an override field of any trial nor a "
                       f"path in result.json: {e}") from e
  return value


def plot_points(spec, plot_spec, trials, results):
  """{series label: [(x, y), ...]} over the completed trials in the table's filters."""
  x_field = plot_spec["x"]
  x_is_override = any(_has(t, p) for t in trials for p in _x_parts(x_field))
  needed = list(_x_parts(x_field)) if x_is_override else []
  series = plot_spec.get("series")
  named = spec.get("columns") if isinstance(spec.get("columns"), dict) else None
  by_column = series == COLUMNS_SERIES
  needed += [series] if series and not by_column else []
  y = plot_spec.get("y", _main_metric(spec))
  # The y axis is labelled as the table's metric, so it is scaled like it (bytes -> MiB).
  scale = _metrics(spec)[0][3] if y == _main_metric(spec) else 1.0
  points = {}
  for t in trials:
    result = results.get(t["id"])
    if not _in_table(t, needed, spec.get("filters", {})) or result is None:
      continue
    if result.get("status") != "completed":
      continue
    y_value = metric_value(result, y, t["name"])
    if y_value is None:
      continue
    if by_column:
      label = _named_column(t, named)
      if label is None:  # in none of the table's columns
        continue
    else:
      label = _label(field_value(t["overrides"], series)) if series else ""
    points.setdefault(label, []).append((_plot_x(plot_spec, t, result),
                                         float(y_value) * scale))
  return points


def plot(spec, plot_spec, trials, results, path):
  """Draws one plot of table `spec` to the PNG `path`; returns its legend's labels."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  points = plot_points(spec, plot_spec, trials, results)
  y = plot_spec.get("y", _main_metric(spec))
  fig = Figure(figsize=(6, 4), dpi=120)  # no pyplot: no global state, Agg canvas
  ax = fig.subplots()
  categories = _categories(points)
  for label, pts in points.items():
    if plot_spec["kind"] == "loglog_slope":
      _draw_loglog(ax, label, pts)
    else:
      _draw_line(ax, label, pts, categories)
  for baseline, style in zip(plot_spec.get("baselines", []), itertools.cycle(["--", ":", "-."])):
    ax.axhline(baseline["y"], linestyle=style, color="gray", linewidth=1,
               label=baseline["label"])
  if plot_spec["kind"] == "loglog_slope":
    ax.set_xscale("log")
    ax.set_yscale("log")
  else:
    ax.set_xscale("log" if plot_spec.get("logx") else "linear")
    ax.set_yscale("log" if plot_spec.get("logy") else "linear")
  if categories:
    ax.set_xticks(range(len(categories)), categories)
  elif ax.get_xscale() == "log":
    _ticks_at_data(ax, points)
  ax.set_xlabel(plot_spec["x"])
  ax.set_ylabel(_metrics(spec)[0][1] if y == _main_metric(spec) else y)
  ax.set_title(plot_spec.get("title", f"{spec['name']}: {y} vs {plot_spec['x']}"), fontsize=10)
  if not points:
    ax.text(0.5, 0.5, "no completed trials yet", ha="center", va="center",
            transform=ax.transAxes)
  labels = ax.get_legend_handles_labels()[1]
  if labels:  # only where there are series or slopes to name
    by_column = plot_spec.get("series") == COLUMNS_SERIES
    ax.legend(title=None if by_column else plot_spec.get("series"), fontsize=8)
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  with storage.path(path).open("wb") as f:  # gs:// too
    fig.savefig(f, format="png")
  return labels


def _ticks_at_data(ax, points):
  """Log-x ticks at the swept values (1, 2, 4, 8 heads), not at 2 x 10^0, 3 x 10^0, ..."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  xs = sorted({float(x) for pts in points.values() for x, _ in pts if float(x) > 0})
  if 0 < len(xs) <= 12:
    ax.set_xticks(xs, [_label(int(x) if x.is_integer() else x) for x in xs])
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def _categories(points):
  """The x values in first-appearance order when any is not a number, else None."""
  xs = [x for pts in points.values() for x, _ in pts]
  if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
    return None
  return list(dict.fromkeys(_label(x) for x in xs))


def _draw_line(ax, label, pts, categories):
  # The mean over trials at the same x (seeds), in x order (category order if
  # categorical), with the interval of the mean where an x has several trials.
  by_x = {}
  for x, y in pts:
    by_x.setdefault(categories.index(_label(x)) if categories else x, []).append(y)
  xs = sorted(by_x)
  means, halves = zip(*(interval(by_x[x]) for x in xs))
  # errorbar even without intervals: the legend then keeps the series' order.
  yerr = [h or 0.0 for h in halves] if any(h is not None for h in halves) else None
  ax.errorbar(xs, means, yerr=yerr, marker="o", capsize=3, label=label or None)


def _draw_loglog(ax, label, pts):
  pts = [(float(x), y) for x, y in pts if float(x) > 0 and y > 0]  # logs need positives
  if not pts:
    return
  xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
  name = f"{label}: " if label else ""
  a, b = tabulate.loglog_fit(xs, ys)
  if math.isnan(b):  # one distinct x
    ax.plot(xs, ys, "o", label=f"{name}slope n/a (one x)")
    return
  line = ax.plot(xs, ys, "o", label=f"{name}slope {b:.2f}")[0]
  grid = np.geomspace(xs.min(), xs.max(), 50)
  ax.plot(grid, np.exp(a) * grid ** b, "--", color=line.get_color(), alpha=0.6)
