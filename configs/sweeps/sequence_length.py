"""Every attention variant against sequence length: step time, memory, accuracy.

Long Range Arena (Tay et al. 2020) Table 2 times one training step of each
efficient Transformer on byte-level text classification at 1K-4K tokens and
reports steps per second and peak memory relative to the vanilla
Transformer. Here every registered variant (library defaults for its
options) trains the same classifier on `order` (which of two markers comes
first; they lie anywhere in the sequence, so the task is long-range) at each
length. Step time is the median over logged windows (data loading
included; the median outweighs the first window, which holds the warm-up),
memory is the compiled train step's temporary bytes
(`memory_analysis`), both from result.json; the log-log plots fit the
exponent of each in L. At scale=cpu (2 layers, d_model 64, batch 8,
lengths 256-2048) each trial trains 30 steps: enough to time it, far too few
to learn the task, so the accuracy there is chance for every variant and the
sweep measures cost only (recall accuracy by variant at CPU scale is the
`mqar` sweep's). scale=paper: 256-16384 tokens (dense runs out of memory at
the long end and is recorded as failed), batch 32, 5000 steps, where
accuracy means something.

Command:
  python -m experiments.sweep --config=configs/sweeps/sequence_length.py:scale=cpu \\
      --workdir=runs/sequence_length
  python -m experiments.tables --workdir=runs/sequence_length \\
      --out_dir=docs/results/sequence_length
  (the sweep writes its tables and plots into <workdir>/tables/; the tables line
  refreshes the recorded results in docs/results/). A timing sweep: run nothing
  beside it.
Runtime (scale=cpu): 1607 s for the 84 trials (3 seeds) on 2 CPU cores (measured
  2026-12-04).
Expected (measured; docs/results/sequence_length/): step time grows as L^2.4 for dense,
  L^1.7 for blockwise, L^1.4 for bigbird and L^0.95-1.1 for the others; at 2048 tokens
  dense takes 6.1 s per step and 2.6 GiB, linear is 37x faster, and blockwise, linear
  and performer use 0.08-0.09 of dense's memory; accuracy is at chance (30 steps) for
  every variant.
"""

from configs import common
from configs.tasks import order as order_task

VARIANTS = ["dense", "blockwise", "local", "strided", "bigbird", "linear", "performer"]
LENGTHS = {"cpu": [256, 512, 1024, 2048], "paper": [256, 1024, 4096, 16384]}
# LRA Table 2 (Tay et al. 2020), byte-level text classification at 1K, 2K, 3K
# and 4K tokens: steps per second and peak memory, each divided by the
# Transformer's (so its row is 1.0), by our variant's name. BigBird's block
# sizes there are LRA's, not our defaults; our strided and blockwise have no
# row (LRA has no strided pattern and no flash-style exact attention).
LRA = {
    "dense": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    "local": [1.1, 1.7, 3.2, 5.3, 0.49, 0.29, 0.19, 0.14],
    "bigbird": [0.9, 0.8, 1.2, 1.1, 0.91, 0.56, 0.40, 0.30],
    "linear": [1.1, 1.9, 3.7, 5.6, 0.44, 0.22, 0.15, 0.11],
    "performer": [1.2, 1.9, 3.8, 5.7, 0.44, 0.22, 0.15, 0.11],
}
LRA_NAMES = {"dense": "Transformer", "local": "Local Attention", "bigbird": "BigBird",
             "linear": "Linear Trans.", "performer": "Performer"}


def get_config(arg=None):
  arg = common.sweep_arg(arg)
  c = order_task.get_config(f"scale={arg.scale}")
  if arg.scale == "cpu":
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 2, 64, 4, 128
    c.batch_size, c.total_steps, c.warmup_steps = 8, 30, 5
    # Six logged windows, so the first (warm-up) one cannot set the median.
    c.log_every = 5
    c.eval_every = c.checkpoint_every = c.total_steps
  else:
    c.batch_size, c.total_steps, c.warmup_steps = 32, 5000, 500
    c.log_every, c.eval_every, c.checkpoint_every = 100, 5000, 1000
  return c


def _task(config, length):
  # As few examples as the budget reads, so generating 2K-token data stays quick;
  # at scale=cpu the eval (64 examples) only checks that every variant runs.
  options = config.task_options.to_dict()
  num_train = config.total_steps * config.batch_size
  num_test = 64 if config.scale == "cpu" else options["num_test"]
  return dict(options, length=length, num_train=num_train, num_test=num_test)


def get_sweep(h, config, arg):
  lengths = LENGTHS[config.scale]
  return h.product([
      h.sweep("attention", VARIANTS),
      h.zipit([h.sweep("max_len", lengths),
               h.sweep("task_options", [_task(config, n) for n in lengths])]),
      common.seed_grid(h, arg),
  ])


def get_tables(config):
  common_caption = (f"scale={config.scale}: {config.task} classifier, {config.num_layers} "
                    f"layers, d_model {config.d_model}, {config.num_heads} heads, batch "
                    f"{config.batch_size}, {config.total_steps} steps, float32, each variant "
                    f"with the library's default options")
  lra = "LRA Table 2"
  def published(first):  # speed to 1 decimal, memory to 2, as LRA prints them
    digits = 1 if first == 0 else 2
    return {"source": lra + ", divided by the Transformer's",
            "columns": ["model", "1K", "2K", "3K", "4K"],
            "rows": {k: [LRA_NAMES[k], *(f"{x:.{digits}f}" for x in v[first:first + 4])]
                     for k, v in LRA.items()}}
  def table(name, caption, metric, label, fmt, **extra):
    return {"name": name, "caption": f"{caption} ({common_caption}).", "rows": ["attention"],
            "columns": ["max_len"], "metric": metric, "metric_label": label, "format": fmt,
            **extra}
  return [
      table("step_time", "Train step time, seconds (median over logged windows)",
            "train_step_time_s", "step time (s)", "{:.4f}",
            plots=[{"kind": "loglog_slope", "x": "max_len", "y": "train_step_time_s",
                    "series": "attention", "title": "Train step time against length"}]),
      table("speed_vs_dense", "Train steps per second relative to dense attention (LRA's "
            "'x faster'); LRA's columns are its own lengths", "train_steps_per_s",
            "speed / dense", "{:.2f}", relative_to={"attention": "dense"},
            published=published(0)),
      table("memory", "Train step temporary memory, MiB (XLA memory_analysis)",
            "train_step_temp_bytes", "MiB", "{:.1f}", scale=2 ** -20,
            plots=[{"kind": "loglog_slope", "x": "max_len", "y": "train_step_temp_bytes",
                    "series": "attention", "title": "Train step memory against length"}]),
      table("memory_vs_dense", "Train step temporary memory relative to dense attention",
            "train_step_temp_bytes", "memory / dense", "{:.2f}",
            relative_to={"attention": "dense"}, published=published(4)),
      table("accuracy", f"Eval accuracy on order, chance "
            f"{1 / config.task_options.num_markers:.2f} (at scale=cpu, 30 steps: a check "
            f"that each variant trains, not a comparison)",
            "final_eval.accuracy", "accuracy", "{:.3f}"),
  ]
