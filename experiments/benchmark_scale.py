"""Benchmark what the mesh buys: per-device memory of context-parallel attention and of FSDP.

Three tables, from XLA's compiled memory analysis (attention_research/benchmark/scale.py):
  1. forward+backward of each variant and strategy at a fixed L on 1, 2, 4, 8 devices split
     over `context`: temporary and peak bytes a device, and each against one device's;
  2. the longest L whose peak fits --budget_mb a device, on each device count;
  3. the train state (parameters and AdamW moments) a device for --train_config's model
     on the meshes of --state_meshes.
Simulated CPU devices share the host's cores: the seconds are printed, not compared.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.benchmark_scale \
        --out_dir=docs/benchmarks/scale
"""

import os

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from attention_research import attention
from attention_research import tabulate
from attention_research.benchmark import measure
from attention_research.benchmark import scale
from experiments import cli

_VARIANTS = flags.DEFINE_list("variants", ["blockwise", "local", "linear"],
                              "Registered variants, each under every strategy it has.")
_STRATEGIES = flags.DEFINE_list(
    "strategies", ["ring", "ring+overlap", "all_gather"],
    "Context-parallel strategies to measure; ring+overlap and ring+serial force the ring's "
    "schedule (plain ring: this backend's default), for the variants whose keys travel whole.")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts along `context`.")
_LENGTH = flags.DEFINE_integer("length", 4096, "L of table 1.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size B.")
_HEADS = flags.DEFINE_integer("heads", 8, "Heads H (query and key/value).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dimension D.")
_CAUSAL = flags.DEFINE_bool("causal", True, "Causal attention (striped under ring).")
_WINDOW = flags.DEFINE_integer("window", 256, "local's window.")
_BUDGET = flags.DEFINE_float("budget_mb", 256.0, "Per-device budget of table 2, in MB (1e6).")
_START = flags.DEFINE_integer("start_length", 1024, "Table 2's search starts here.")
_CALLS = flags.DEFINE_integer("calls", 1, "Timed calls per point of table 1 (after a warm-up); "
                               "0 compiles only (memory without times).")
_TRAIN_CONFIG = config_flags.DEFINE_config_file(
    "train_config", "configs/tasks/mqar.py:scale=cpu", "Table 3's model (a task config).")
_LONGEST_TABLE = flags.DEFINE_bool("longest_table", True, "Measure table 2.")
_STATE_TABLE = flags.DEFINE_bool("state_table", True, "Measure table 3.")
_STATE_MESHES = flags.DEFINE_list("state_meshes", ["data=-1", "fsdp=-1", "fsdp=4/tensor=2"],
                                  "Table 3's meshes: axis=size pairs joined by '/'.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Also write scale.md here.")


def parse_mesh(text):
  sizes = dict(data=1)
  for pair in text.split("/"):
    axis, _, size = pair.partition("=")
    sizes[axis] = int(size)
  return sizes


def cases():
  for name in _VARIANTS.value:
    v = attention.variant(name)
    for strategy in _STRATEGIES.value:
      base, _, schedule = strategy.partition("+")
      if base in v.context and (not schedule or getattr(v.context[base], "overlaps", False)):
        yield name, strategy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup(None)
  counts = [int(n) for n in _DEVICES.value]
  if max(counts) > len(jax.devices()):
    raise app.UsageError(f"--devices={_DEVICES.value} needs {max(counts)} devices and jax has "
                         f"{len(jax.devices())}; on CPU export XLA_FLAGS="
                         f"--xla_force_host_platform_device_count={max(counts)} first")
  shapes = scale.Shapes(batch=_BATCH.value, heads=_HEADS.value, head_dim=_HEAD_DIM.value,
                        causal=_CAUSAL.value, options=(("local", {"window": _WINDOW.value}),))
  lines = [f"# Scale benchmark: per-device memory over the mesh",
           "",
           f"Machine: {measure.cpu_model()}, {os.cpu_count()} cores, {len(jax.devices())} "
           f"simulated {jax.devices()[0].platform} devices; jax {jax.__version__}.",
           f"Shapes: B={shapes.batch}, H={shapes.heads}, D={shapes.head_dim}, "
           f"{'causal' if shapes.causal else 'not causal'}, float32; local window "
           f"{_WINDOW.value}. Bytes per device from XLA's compiled memory analysis; "
           f"times share the host's cores (not speed-ups).", ""]

  header = ["variant", "strategy", "devices", "temp MB", "temp x devices / one's", "peak MB",
            "peak vs one", "fwd+bwd s", "compile s"]
  rows = []
  for name, strategy in cases():
    base = None
    for n in counts:
      point = scale.context_point(name, strategy, n, _LENGTH.value, shapes, calls=_CALLS.value)
      base = base or point
      rows.append([name, strategy, n, point["temp"] / 1e6, point["temp"] * n / base["temp"],
                   point["peak"] / 1e6, point["peak"] / base["peak"], point["seconds"],
                   point["compile_s"]])
      print(name, strategy, n, point, flush=True)
  lines += [f"## 1. Forward+backward at L={_LENGTH.value}, split over `context`", "",
            "`temp x devices / one's` is 1.0 when a device's temporary memory falls as 1/n.",
            "", tabulate.markdown_table(header, rows), ""]

  if _LONGEST_TABLE.value:
    header = ["variant", "strategy"] + [f"{n} devices" for n in counts] + ["longest vs one"]
    rows = []
    for name, strategy in cases():
      found = [scale.longest_length(name, strategy, n, _BUDGET.value * 1e6, shapes,
                                    start=_START.value) for n in counts]
      print(name, strategy, found, flush=True)
      ratios = "-" if not found[0] else ", ".join(
          f"{f / found[0]:.2f}" if f else "-" for f in found)
      rows.append([name, strategy, *found, ratios])
    lines += [f"## 2. Longest L whose forward+backward fits {_BUDGET.value:g} MB a device", "",
              "Doubling from the start length, then bisecting the last doubling to an eighth.",
              "", tabulate.markdown_table(header, rows), ""]

  if _STATE_TABLE.value:
    found = scale.state_bytes(_TRAIN_CONFIG.value, [parse_mesh(m) for m in _STATE_MESHES.value])
    base = found[0][1]
    rows = [[" x ".join(f"{axis} {size}" for axis, size in shape.items() if size > 1) or "one",
             size / 1e6, base / size] for shape, size in found]
    lines += [f"## 3. Train state a device: {flags.FLAGS['train_config'].config_filename}", "",
              "Parameters plus AdamW's two moments, on the device that holds most.", "",
              tabulate.markdown_table(["mesh", "state MB", "first row / this"], rows), ""]

  text = "\n".join(lines)
  print(text)
  if _OUT_DIR.value:
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    with open(os.path.join(_OUT_DIR.value, "scale.md"), "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
