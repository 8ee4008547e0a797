"""Runs a sweep: every trial of a sweep config through the trainer, resumably.

    python -m experiments.sweep --config=configs/sweeps/<name>.py:scale=cpu --workdir=DIR

The config file has `get_config(arg)` (the base config) and `get_sweep(h)`
(the grid, built with h.product, h.sweep, h.zipit, h.chainit, h.fixed; or
`get_sweep(h, config)` to read the base config, or `get_sweep(h, config,
arg)` to read the config argument too, e.g. `seeds=3`) and optionally
`get_tables(config)` (the tables experiments.tables renders).
Run it from the repository root. `--config.<field>=<value>` overrides apply
to every trial; every trial's config is validated before the first one runs,
and the sweep ends by writing its tables and plots into DIR/tables/. Running the same
command again skips completed trials and resumes the interrupted one;
`--num_shards=N --shard_index=i` runs every N-th trial (hosts sharing DIR);
`--retry_failed` runs failed and diverged trials again; `--dry_run` lists the
trials and their status (a trial another process holds shows as "running"),
and exits; `--claim_timeout_s` is how long another host's claim on a trial
outlives its last heartbeat. Two copies of one command share the trials: each
runs only those it claims. On a pod slice, run the same command with
`--distributed` on every host: each trial is one multi-process training run,
and process 0 decides which trials run, writes the sweep's files and prints.
SIGTERM or Ctrl-C checkpoints the running trial and ends the sweep with exit
code 75 (pre-empted); the same command resumes it.
"""

import importlib.util
import os
import sys

from absl import app
from absl import flags
import jax

from attention_research import preemption
from attention_research import storage
from attention_research.sweep import grid
from attention_research.sweep import runner
from attention_research.sweep import tables as tables_lib
from experiments import cli

_CONFIG = cli.define_config_flag("Sweep config file, e.g. configs/sweeps/positional.py:scale=cpu.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (trials/<id>/ per trial).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the trials and their status, and exit.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Split the trials N ways...")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", 0, "...and run every N-th from this one.")
_RETRY = flags.DEFINE_bool("retry_failed", False, "Run failed and diverged trials again (the "
                           "earlier attempt is kept under attempts/).")
_DISTRIBUTED = cli.define_distributed_flags("all running every trial together")
_CLAIM_TIMEOUT = flags.DEFINE_integer(
    "claim_timeout_s", runner.STALE_AFTER_S, "A trial claimed by a process on another host "
    "whose heartbeat is older than this is taken over (a host that was preempted, say); on "
    "this host, one whose process is gone.")
_CACHE = flags.DEFINE_string("jax_cache_dir", "~/.cache/attention_research/jax",
                             "Persistent compilation cache ('' turns it off).")
flags.mark_flags_as_required(["config", "workdir"])


def load_sweep(path, base_config, arg=None):
  """(grid, tables) from the config file `path` (the one --config names).

  get_sweep gives the grid (see grid.of_config); the optional
  get_tables(config) gives the table specs (see
  attention_research/sweep/tables.py) for the base config.
  """
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  tables = module.get_tables(base_config) if hasattr(module, "get_tables") else []
  return grid.of_config(module, base_config, arg), tables


def status_listing(trials, workdir, num_shards, claim_timeout_s):
  """One line per trial: number, id, shard, status (as runner.trial_status), name."""
  return "\n".join(
      f"{index + 1:4d}  {tid}  shard {index % num_shards}  "
      f"{runner.trial_status(workdir, tid, claim_timeout_s):11s}  {name}"
      for index, tid, name, _, _ in trials)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup(_CACHE.value, _DISTRIBUTED)
  runner.check_shard(_NUM_SHARDS.value, _SHARD_INDEX.value)
  config = cli.checked_config(_CONFIG)
  path = cli.config_path()
  sweep_grid, tables = load_sweep(path, config, cli.config_arg())
  trials = runner.make_trials(config, sweep_grid)
  # A --config.<field> that the grid also sets would be silently overwritten.
  overridden = set(cli.override_values())
  grid_fields = {f for t in sweep_grid for f in t}
  shadowed = sorted(o for o in overridden for g in grid_fields
                    if o == g or o.startswith(g + ".") or g.startswith(o + "."))
  if shadowed:
    cli.exit_with(f"--config.{shadowed[0]}: the sweep grid sets this field per trial, so the "
                  f"command-line value would be ignored; edit the sweep config instead")
  try:  # every trial, before the first runs: a bad grid value should not wait an hour
    runner.check_trials(trials)
  except ValueError as e:
    cli.exit_with(e)
  # Process 0 alone prints: the others' view of the workdir may lag; one copy is enough.
  main_process = jax.process_index() == 0
  if _DRY_RUN.value:
    if main_process:
      print(status_listing(trials, _WORKDIR.value, _NUM_SHARDS.value, _CLAIM_TIMEOUT.value))
    return
  try:  # a refused rerun (another grid, a trial's changed config) is one line
    with preemption.watch():  # between trials too: a signal stops the sweep, not kills it
      runner.run(trials, _WORKDIR.value, num_shards=_NUM_SHARDS.value,
                 shard_index=_SHARD_INDEX.value, retry_failed=_RETRY.value, config_path=path,
                 tables=tables, claim_timeout_s=_CLAIM_TIMEOUT.value)
      preempted = preemption.requested(synced=True)
  except ValueError as e:
    cli.exit_with(e)
  if preempted:  # the same code as the trainer's
    print("sweep preempted: run the same command again to resume", file=sys.stderr)
    raise SystemExit(preemption.EXIT_CODE)
  if not main_process:
    return
  print(runner.summary_table(trials, _WORKDIR.value, claim_timeout_s=_CLAIM_TIMEOUT.value))
  if tables:  # and the tables the sweep config declares, written once, then printed
    out_dir = os.path.join(_WORKDIR.value, "tables")
    for path in tables_lib.write(_WORKDIR.value, out_dir):
      if path.endswith(".md"):
        print("\n" + storage.path(path).read_text(), end="")
    print(f"\ntables and plots written to {out_dir}")


if __name__ == "__main__":
  app.run(main)
