"""The binaries' command line: nested overrides, one-line config errors, quiet logs."""

import logging
import os
import subprocess
import sys

from experiments import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(tmp_path, *flags_):
  command = [sys.executable, "-m", "experiments.train", "--config=configs/tasks/mqar.py",
             f"--workdir={tmp_path / 'run'}", "--jax_cache_dir=", *flags_]
  return subprocess.run(command, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=120)


def test_a_misspelt_field_is_one_line_naming_the_close_match(tmp_path):
  proc = run_train(tmp_path, "--config.nmu_heads=4")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]
  assert "unknown config field `nmu_heads`; did you mean num_heads" in proc.stderr
  assert not (tmp_path / "run").exists()  # refused before the run wrote anything


def test_nested_options_are_set_one_by_one_and_reach_the_variant(tmp_path):
  # A value the variant refuses shows the override was parsed (as an int) and reached it.
  proc = run_train(tmp_path, "--config.attention=local", "--config.attention_options.window=-1")
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "window" in proc.stderr and "-1" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  proc = run_train(tmp_path, "--config.attention=local", "--config.attention_options.windw=4")
  assert proc.returncode == 1 and "does not take ['windw']" in proc.stderr
  proc = run_train(tmp_path, "--config.task_options.num_kv_pairs=0")
  assert proc.returncode == 1 and "num_kv_pairs" in proc.stderr


def _record(pathname, level, msg):
  return logging.LogRecord("absl", level, pathname, 1, msg, None, None)


def test_library_chatter_is_dropped_and_its_problems_kept():
  tfds = f"{os.sep}site-packages{os.sep}tensorflow_datasets{os.sep}core{os.sep}dataset_builder.py"
  orbax = f"{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint{os.sep}manager.py"
  ours = f"{os.sep}repo{os.sep}attention_research{os.sep}train.py"
  assert not cli._quiet(_record(tfds, logging.WARNING, "Using custom data configuration: x"))
  assert not cli._quiet(_record(orbax, logging.INFO, "Saving checkpoint"))
  assert cli._quiet(_record(tfds, logging.WARNING, "Something is wrong"))
  assert cli._quiet(_record(ours, logging.INFO, "step 10/600"))
