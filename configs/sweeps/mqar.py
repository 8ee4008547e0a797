"""Associative recall by attention family and width (Zoology, Arora et al. 2023, Fig. 2).

The claim: attention solves multi-query associative recall at any width,
while linear-cost attention (linear, Performer) and local windows lose recall
unless their state grows (Zoology: "gated convolutions and linear attention
need a larger model dimension"). At CPU scale: 64-token sequences with 4
key-value pairs, d_model 64 and 128, 2 layers, 600 steps; `local` gets a
16-token window, which cannot reach pairs that lie further back than that.

Command:
  python -m experiments.sweep --config=configs/sweeps/mqar.py:scale=cpu --workdir=runs/mqar_sweep
  python -m experiments.tables --workdir=runs/mqar_sweep --out_dir=docs/results/mqar
  (the sweep writes its tables and plots into <workdir>/tables/; the tables line
  refreshes the recorded results in docs/results/)
Runtime (scale=cpu): 881 s for the 8 trials on 2 CPU cores (measured 2026-11-27).
Expected (measured; docs/results/mqar/): query accuracy at d_model 64 / 128: dense
  0.999 / 1.000, local 0.184 / 0.188, linear 0.258 / 0.306, performer 0.317 / 0.307.
"""

from configs import common
from configs.tasks import mqar as mqar_task

# Each family with the options that make the comparison meaningful at L=64.
FAMILIES = [
    {"attention": "dense", "attention_options": {}},
    {"attention": "local", "attention_options": {"window": 16}},
    {"attention": "linear", "attention_options": {}},
    {"attention": "performer", "attention_options": {"num_features": 64}},
]


def get_config(arg=None):
  arg = common.sweep_arg(arg)
  c = mqar_task.get_config(f"scale={arg.scale}")
  if arg.scale == "cpu":  # the task config's 600 steps, 4 pairs; one eval, at the end
    c.eval_every = c.checkpoint_every = c.total_steps
  return c


def get_sweep(h, config, arg):
  widths = [64, 128] if config.scale == "cpu" else [64, 128, 256, 512]
  return h.product([FAMILIES, h.sweep("d_model", widths), common.seed_grid(h, arg)])


def get_tables(config):
  return [{
      "name": "mqar",
      "caption": (f"MQAR eval accuracy on query positions (scale={config.scale}: "
                  f"{config.task_options.seq_len} tokens, {config.task_options.num_kv_pairs} "
                  f"key-value pairs, vocab {config.task_options.vocab_size}, "
                  f"{config.num_layers} layers, {config.total_steps} steps). Zoology's Fig. 2 "
                  f"uses 64-512 tokens and d_model 64-512; its qualitative claim is compared, "
                  f"not its numbers."),
      "rows": ["attention"],
      "columns": ["d_model"],
      "metric": "final_eval.accuracy",
      "metric_label": "query accuracy",
      "format": "{:.3f}",
      "plots": [{"kind": "line", "x": "d_model", "y": "final_eval.accuracy",
                 "series": "attention", "logx": True,
                 "title": "MQAR query accuracy against width"}],
  }]
