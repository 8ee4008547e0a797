"""Associative recall by attention family and width (MQAR: Zoology, Arora et al. 2023).

The claim: attention solves multi-query associative recall at any width,
while linear-cost attention (linear, Performer), whose state is fixed, loses
recall unless its state grows (Arora et al. 2024, "Simple linear attention
language models balance the recall-throughput tradeoff" (Based): recall
against state size on MQAR; Zoology's own Fig. 2 compares attention with
gated convolutions). At CPU scale: 64-token sequences with 4 key-value pairs,
d_model 64 and 128, 2 layers, 600 steps, 3 seeds; `local` gets a 16-token
window, which reaches a pair's value only from queries at most 16 tokens
after it (experiments/inspect_attention.py measures how many are, and
local's accuracy on them). The plot's gray lines are what guessing scores
(data/mqar.py's guessing_accuracy).

Command:
  python -m experiments.sweep --config=configs/sweeps/mqar.py:scale=cpu --workdir=runs/mqar_sweep
  python -m experiments.tables --workdir=runs/mqar_sweep --out_dir=docs/results/mqar
  python -m experiments.inspect_attention --workdir=runs/mqar_sweep \
      --out_dir=docs/results/mqar/inspect --distance_edges=16,32 --num_batches=16 --batch_size=64
  (the sweep writes its tables and plots into <workdir>/tables/; the tables line
  refreshes the recorded results in docs/results/; the last inspects the dense
  and local trials)
Runtime (scale=cpu): 24 trials (3 seeds) in about 36 min with two copies of the sweep
  command on 2 CPU cores (measured 2026-12-04; 105-255 s a trial).
Expected (measured; docs/results/mqar/, mean ± 95% half-width over 3 seeds): query
  accuracy at d_model 64 / 128: dense 0.963 ± 0.155 / 0.999, local 0.178 / 0.188, linear
  0.267 ± 0.040 / 0.314 ± 0.020, performer 0.314 / 0.310; local answers only 0.25 of the
  58% of queries whose value is inside its window.
"""

from attention_research.data import mqar as mqar_data
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
  pairs = config.task_options.num_kv_pairs
  guess, guess_unasked = (mqar_data.guessing_accuracy(pairs),
                          mqar_data.guessing_accuracy(pairs, skip_asked=True))
  return [{
      "name": "mqar",
      "caption": (f"MQAR eval accuracy on query positions (scale={config.scale}: "
                  f"{config.task_options.seq_len} tokens, {pairs} key-value pairs, vocab "
                  f"{config.task_options.vocab_size}, {config.num_layers} layers, "
                  f"{config.total_steps} steps). Guessing one of the {pairs} values in the "
                  f"context scores {guess:.3f}; guessing one not yet asked for, "
                  f"{guess_unasked:.3f}. The recall gap of linear-cost attention is Arora et "
                  f"al. 2024's (Based); its qualitative claim is compared, not its numbers."),
      "rows": ["attention"],
      "columns": ["d_model"],
      "metric": "final_eval.accuracy",
      "metric_label": "query accuracy",
      "format": "{:.3f}",
      "plots": [{"kind": "line", "x": "d_model", "y": "final_eval.accuracy",
                 "series": "attention", "logx": True,
                 "title": "MQAR query accuracy against width",
                 "baselines": [
                     {"y": guess, "label": f"guess one of the {pairs} values"},
                     {"y": guess_unasked, "label": "guess one not yet asked"}]}],
  }]
