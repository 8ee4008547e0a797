"""Multi-query associative recall (Zoology, Arora et al. 2023) with a 2-layer decoder.

Command:
  python -m experiments.train --config=configs/tasks/mqar.py:scale=cpu --workdir=/tmp/mqar
Runtime: about 1 min 50 s (106 s wall, 600 steps at about 6.5 steps/s, data generated on
  first use), on 2 CPU cores (scale=cpu).
Expected: final eval query accuracy 0.9985 (loss 0.013); 0.99 already at step 400
  (measured 2026-11-27 on the 2-core development VM (Xeon Sapphire Rapids, CPU only)).

Arguments (after the colon, comma-separated):
  scale=cpu|paper   cpu: 64 tokens, 4 key-value pairs, a few minutes on a laptop;
                    paper: Zoology's Fig. 2 setting (256 tokens, 16 pairs,
                    vocab 8192, 100k examples), for an accelerator.
  attention=<name>  any registered attention variant.
  pos=<name>        none | sinusoidal | learned | rope | alibi.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, scale="cpu", attention="dense", pos="rope")
  common.one_of("scale", arg.scale, ("cpu", "paper"))
  c = common.base_config()
  c.scale = arg.scale
  c.task = "mqar"
  c.model = "decoder"
  c.attention = arg.attention
  c.pos = arg.pos
  if arg.scale == "cpu":
    c.task_options = dict(vocab_size=256, seq_len=64, num_kv_pairs=4, num_train=20_000,
                          num_test=1_000)
    c.max_len = 64
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 2, 64, 4, 256
    c.batch_size, c.total_steps, c.warmup_steps = 64, 600, 50
    c.learning_rate, c.weight_decay = 3e-3, 0.1
    c.log_every, c.eval_every, c.checkpoint_every = 50, 200, 200
  else:
    c.task_options = dict(vocab_size=8192, seq_len=256, num_kv_pairs=16, num_train=100_000,
                          num_test=3_000)
    c.max_len = 256
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 2, 256, 4, 1024
    c.batch_size, c.total_steps, c.warmup_steps = 256, 25_000, 1000
    c.learning_rate, c.weight_decay = 1e-3, 0.1
    c.log_every, c.eval_every, c.checkpoint_every = 100, 2500, 2500
  c.attention_options = common.attention_options(c.attention, c.max_len)
  return c
