"""Which marker comes first: a task with identical token multisets in every class.

Only position information solves it, so with pos=none attention should sit
at chance (1 / num_markers) and with any positional encoding near 1.

Command:
  python -m experiments.train --config=configs/tasks/order.py:scale=cpu --workdir=/tmp/order
Runtime: about 1 min 15 s (77 s wall, 600 steps), on 2 CPU cores (scale=cpu).
Expected: pos=sinusoidal: final eval accuracy 1.000 (0.995 at step 200); pos=none:
  0.503, chance, as permutation-invariant attention must give (measured 2026-11-27 on
  the 2-core development VM (Xeon Sapphire Rapids, CPU only)).

Arguments (after the colon, comma-separated):
  scale=cpu|paper   cpu: 64 tokens, 2 markers; paper: 1024 tokens, 4 markers.
  attention=<name>  any registered attention variant.
  pos=<name>        none | sinusoidal | learned | rope | alibi.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, scale="cpu", attention="dense", pos="sinusoidal")
  common.one_of("scale", arg.scale, ("cpu", "paper"))
  c = common.base_config()
  c.scale = arg.scale
  c.task = "order"
  c.model = "classifier"
  c.pooling = "mean"
  c.attention = arg.attention
  c.pos = arg.pos
  if arg.scale == "cpu":
    c.task_options = dict(length=64, num_markers=2, vocab_size=32, num_train=20_000,
                          num_test=1_000)
    c.max_len = 64
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 2, 64, 4, 128
    c.batch_size, c.total_steps, c.warmup_steps = 64, 600, 50
    c.learning_rate = 1e-3
    c.log_every, c.eval_every, c.checkpoint_every = 50, 200, 200
  else:
    c.task_options = dict(length=1024, num_markers=4, vocab_size=64, num_train=100_000,
                          num_test=2_000)
    c.max_len = 1024
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 4, 256, 8, 1024
    c.batch_size, c.total_steps, c.warmup_steps = 128, 10_000, 1000
  c.attention_options = common.attention_options(c.attention, c.max_len)
  return c
