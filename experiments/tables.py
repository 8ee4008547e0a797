"""Prints a sweep's tables (Markdown, LaTeX or CSV) and writes them and their PNG plots.

    python -m experiments.tables --workdir=runs/aiayn_table3
    python -m experiments.tables --workdir=runs/aiayn_table3 --format=latex \
        --out_dir=docs/results/aiayn_table3
    python -m experiments.tables --workdir=docs/results/aiayn_table3/results.jsonl

The tables are the ones the sweep config's get_tables(config) declares
(recorded in DIR/sweep.json by experiments.sweep), with the published figures
beside ours where the config reproduces a paper. It can run while the sweep
is still going: trials without a result yet are blank. --out_dir also writes
<name>.<md|tex|csv> and <name>_<i>.png per table, and the raw per-trial
results (results.jsonl), from which --workdir=<that file> renders the same
tables without the sweep's directory. See
attention_research/sweep/tables.py for what a cell shows.
"""

import sys

from absl import app
from absl import flags

from attention_research.sweep import tables

_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's directory (holds sweep.json), "
                                "or a results.jsonl that --out_dir wrote.")
_FORMAT = flags.DEFINE_string("format", "markdown", f"One of {sorted(tables.FORMATS)}.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "If set, also write the tables and plots here.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(tables.render(_WORKDIR.value, _FORMAT.value), end="")
  if _OUT_DIR.value:
    for path in tables.write(_WORKDIR.value, _OUT_DIR.value, _FORMAT.value):
      print(f"wrote {path}", file=sys.stderr)  # stdout stays the tables alone


if __name__ == "__main__":
  app.run(main)
