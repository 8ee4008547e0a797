"""Heads and key size (Vaswani et al. 2017, Table 3, rows A and B) on byte-level text.

The paper varies one thing at a time around its base model (N=6, d_model 512,
d_ff 2048, h=8, d_k=d_v=64) on WMT 2014 English-German and reports dev
perplexity and BLEU: (A) the number of heads at fixed d_model, with d_k =
d_model / h, where one head is 0.9 BLEU worse than eight and 32 heads again
worse; (B) a smaller d_k at h=8, which hurts. We have no WMT here: both scales
train a byte-level decoder on the Python standard library's source
(configs/tasks/stdlib_bytes.py; a corpus every machine has, split by file) and
report bits per byte on the held-out files, where lower is better as PPL is.
At scale=cpu the base is 2 layers of d_model 144, d_ff 576, h=8 (d_k 18),
sinusoidal positions as the paper's (rope needs an even d_k), 128-byte
windows, 400 steps of batch 16, no dropout: row (A) is h in {1, 2, 4, 8, 12,
16} (d_k 144 ... 9; 144 divides by all of them and d_k stays >= 8), row (B)
d_k 12 and 8 at h=8. scale=paper runs the paper's own rows at its sizes
(d_model 512, N=6) on 1024-byte windows for the task config's 20K steps. Our
head_dim sets d_k and d_v together (the paper's (B) changes d_k alone).

Arguments: scale=cpu|paper, seeds (default 3), budget=true (only the base, h=1
and h=16, for 4x the steps: does row (A)'s ranking hold with more training?).

Command:
  python -m experiments.sweep --config=configs/sweeps/aiayn_table3.py:scale=cpu \\
      --workdir=runs/aiayn_table3
  python -m experiments.tables --workdir=runs/aiayn_table3 --out_dir=docs/results/aiayn_table3
  python -m experiments.inspect_attention --workdir=runs/aiayn_table3 \\
      --out_dir=docs/results/aiayn_table3/inspect
  (the sweep writes its tables and plots into <workdir>/tables/; the tables line
  refreshes the recorded results in docs/results/; a second copy of the sweep
  command on the same workdir runs the trials the first has not claimed; the
  budget run: `:scale=cpu,budget=true`, --workdir=runs/aiayn_budget, tables into
  docs/results/aiayn_table3/budget)
Runtime (scale=cpu): 21 min for the 24 trials with two runners on 2 CPU cores,
  57-125 s a trial (measured 2026-12-04).
Expected (measured; docs/results/aiayn_table3/): bits per byte 2.554 +- 0.042 at h=1,
  2.619 +- 0.061 at h=8 (the base), 2.681 +- 0.063 at h=16, 2.702 +- 0.034 at d_k=8
  (8.0 is uniform): at this budget fewer, wider heads are better, the reverse of the
  paper's h=1; a small d_k hurts, as in the paper. budget=true (71 min for 9 trials on
  cores shared with other jobs; about 250 s a trial alone): h=8 1.941 +- 0.011, h=1
  1.966 +- 0.013, h=16 1.995 +- 0.021, the paper's order for one head against eight.
"""

from attention_research.sweep import tables
from configs import common
from configs.tasks import stdlib_bytes

# Fields in the order of the paper's columns: N, d_model, d_ff, h, d_k.
FIELDS = ("num_layers", "d_model", "mlp_dim", "num_heads", "head_dim")
BASE = {"cpu": (2, 144, 576, 8, 18), "paper": (6, 512, 2048, 8, 64)}

# (paper row, changes at scale=cpu, changes at scale=paper (None: not run at that
#  scale), Table 3's dev PPL and BLEU (None: a row the paper does not have)).
ROWS = [
    ("base", {}, {}, (4.92, 25.8)),
    ("(A) h=1", dict(num_heads=1, head_dim=144), dict(num_heads=1, head_dim=512),
     (5.29, 24.9)),
    ("(A) h=2", dict(num_heads=2, head_dim=72), None, None),
    ("(A) h=4", dict(num_heads=4, head_dim=36), dict(num_heads=4, head_dim=128),
     (5.00, 25.5)),
    ("(A) h=12", dict(num_heads=12, head_dim=12), None, None),
    ("(A) h=16", dict(num_heads=16, head_dim=9), dict(num_heads=16, head_dim=32),
     (4.91, 25.8)),
    ("(A) h=32", None, dict(num_heads=32, head_dim=16), (5.01, 25.4)),
    ("(B) d_k=12", dict(head_dim=12), None, None),
    ("(B) d_k=8", dict(head_dim=8), None, None),
    ("(B) d_k=16", None, dict(head_dim=16), (5.16, 25.1)),
    ("(B) d_k=32", None, dict(head_dim=32), (5.01, 25.4)),
]


STEPS = {"cpu": 400, "paper": 20_000}  # paper: the stdlib_bytes config's own
# budget=true: does the ranking of row (A) hold with four times the steps?
BUDGET_ROWS = ("base", "(A) h=1", "(A) h=16")
BUDGET_STEPS = 4


def _arg(arg):
  return common.sweep_arg(arg, budget=False)


def get_config(arg=None):
  arg = _arg(arg)
  c = stdlib_bytes.get_config(f"scale={arg.scale},pos=sinusoidal")
  c.update(dict(zip(FIELDS, BASE[arg.scale])))
  if arg.scale == "cpu":
    c.task_options.update(length=128)
    c.max_len = 128
    c.attention_options = common.attention_options(c.attention, c.max_len)
    c.warmup_steps = 40
  c.total_steps = STEPS[arg.scale] * (BUDGET_STEPS if arg.budget else 1)
  # One eval and one checkpoint, at the end: the checkpoint is what
  # experiments/inspect_attention.py reads.
  c.eval_every = c.checkpoint_every = c.total_steps
  return c


def _rows(scale, budget=False):
  """[(paper row, full overrides, published)] of the rows run at this scale."""
  rows = []
  for name, cpu, paper, published in ROWS:
    changes = cpu if scale == "cpu" else paper
    if changes is not None and (not budget or name in BUDGET_ROWS):
      rows.append((name, dict(zip(FIELDS, BASE[scale])) | changes, published))
  return rows


def get_sweep(h, config, arg):
  # Every trial sets all five fields, so each row of the table reads like the paper's.
  rows = _rows(config.scale, _arg(arg).budget)
  return h.product([[overrides for _, overrides, _ in rows],
                    common.seed_grid(h, arg, budget=False)])


def _label(overrides):
  return tables.row_label([overrides[f] for f in FIELDS])


def _paper_text(published):
  # As printed in the paper: PPL to 2 decimals, BLEU to 1; blank for our own rows.
  if published is None:
    return ["", ""]
  ppl, bleu = published
  return [f"{ppl:.2f}", f"{bleu:.1f}"]


def _is_budget(config):
  # The tables see the config, not the argument: budget=true is the longer run.
  return config.total_steps == STEPS[config.scale] * BUDGET_STEPS


def get_tables(config):
  rows = _rows(config.scale, _is_budget(config))
  published = {_label(o): [name, *_paper_text(p)] for name, o, p in rows}
  # The paper's rows we do not run at this scale, under the paper's own label.
  run = {name for name, _, _ in rows}
  for name, cpu, paper, p in ROWS:
    if name not in run and p is not None:
      at_scale = (cpu if config.scale == "cpu" else paper) is not None
      why = "not run in the budget run" if at_scale else f"not run at scale={config.scale}"
      published[f"{name} ({why})"] = [name, *_paper_text(p)]
  base = dict(zip(FIELDS, BASE[config.scale]))
  task = (f"a byte-level decoder on the Python stdlib's source "
          f"({config.task_options.length}-byte windows, held-out files), "
          f"{config.total_steps} steps of batch {config.batch_size}")
  return [{
      "name": "table3",
      "caption": (f"Heads and key size, Vaswani et al. 2017 Table 3 rows A and B "
                  f"(scale={config.scale}). Ours: {task}; bits per byte and next-byte "
                  f"accuracy on the test files (lower bits are better, as PPL is). Theirs: "
                  f"WMT 2014 En-De newstest2013, base N=6, d_model 512, 100K steps. "
                  f"head_dim is d_k = d_v."),
      "rows": list(FIELDS),
      "columns": [],
      "metric": ["final_eval.bits_per_token", "final_eval.accuracy", "num_params"],
      "metric_label": ["bits per byte", "accuracy", "params"],
      "format": ["{:.4f}", "{:.4f}", "{:,.0f}"],
      "published": {"source": "Vaswani et al. 2017 Table 3",
                    "columns": ["row", "PPL (dev)", "BLEU (dev)"],
                    "rows": published},
  }, {
      # Row (A) alone: the base's every field but heads, with d_k = d_model / h.
      "name": "table3_heads",
      "caption": (f"Row (A): bits per byte and accuracy against the number of heads at "
                  f"d_model {base['d_model']}, d_k = d_model / h (scale={config.scale}; "
                  f"{task})."),
      "rows": ["num_heads"],
      "columns": [],
      "filters": {f: base[f] for f in ("num_layers", "d_model", "mlp_dim")}
                 | {"num_heads*head_dim": base["d_model"]},
      "metric": ["final_eval.bits_per_token", "final_eval.accuracy"],
      "metric_label": ["bits per byte", "accuracy"],
      "format": ["{:.4f}", "{:.4f}"],
      "published": {"source": "Vaswani et al. 2017 Table 3",
                    "columns": ["PPL (dev)", "BLEU (dev)"],
                    "rows": {str(o["num_heads"]): _paper_text(p)
                             for name, o, p in rows
                             if p is not None and (name == "base" or name.startswith("(A)"))}},
      "plots": [{"kind": "line", "x": "num_heads", "y": "final_eval.bits_per_token",
                 "logx": True,
                 "title": f"Row (A): bits per byte against heads at d_model {base['d_model']}"}],
  }]
