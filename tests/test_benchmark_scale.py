"""The scale benchmark binary end to end on 2 simulated devices, at tiny sizes: its tables
hold the memory figures the compiled programs report (no timing is checked)."""

import os
import subprocess
import sys

import pytest

from tests.test_train import ROOT


def test_the_scale_benchmark_writes_its_three_tables(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  done = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark_scale", "--devices=1,2", "--length=256",
       "--variants=linear,blockwise", "--strategies=ring", "--budget_mb=2.5",
       "--start_length=256", "--heads=2", "--head_dim=16", "--state_meshes=data=-1,fsdp=-1",
       f"--out_dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  text = open(tmp_path / "scale.md").read()
  rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:3]): line
          for line in text.splitlines() if line.startswith("| linear") or
          line.startswith("| blockwise") or line.startswith("| data") or
          line.startswith("| fsdp")}
  cell = lambda key, i: float(rows[key].strip("|").split("|")[i])
  # linear's temporaries are all per token: halved on two devices (to the table's 3 digits).
  assert cell(("linear", "ring", "1"), 3) == pytest.approx(2 * cell(("linear", "ring", "2"), 3),
                                                           rel=0.02)
  assert cell(("blockwise", "ring", "2"), 5) < cell(("blockwise", "ring", "1"), 5)  # peak
  # Table 2: two devices fit a longer sequence than one in the same budget.
  longest = [line for line in text.splitlines() if line.startswith("| linear | ring |")][-1]
  one, two = (int(c) for c in longest.strip("|").split("|")[2:4])
  assert two > one
  # Table 3: FSDP over two devices halves the state a device, to within the unsplit vectors.
  fsdp = [line for line in text.splitlines() if line.startswith("| fsdp 2")][0]
  assert 1.9 < float(fsdp.strip("|").split("|")[2]) <= 2.0


def test_a_point_compiled_only_has_the_memory_of_a_timed_one_and_no_time():
  from attention_research.benchmark import scale
  shapes = scale.Shapes(heads=2, head_dim=16)
  timed = scale.context_point("linear", "ring", 1, 256, shapes, calls=1)
  compiled = scale.context_point("linear", "ring", 1, 256, shapes, calls=0)
  assert (compiled["temp"], compiled["peak"]) == (timed["temp"], timed["peak"])
  assert compiled["seconds"] != compiled["seconds"] and timed["seconds"] > 0  # NaN: not run
