"""Copy (or reverse) a random payload after a separator, with a decoder LM.

Command:
  python -m experiments.train --config=configs/tasks/copy.py:scale=cpu --workdir=/tmp/copy
Runtime: about 1 min (59 s wall for copy, 66 s for reverse; 400 steps), on 2 CPU cores
  (scale=cpu).
Expected: copy: final eval accuracy 1.000 on the answer tokens (solved by step 200);
  reverse (mode=reverse, pos=rope): 0.478 after 400 steps, still learning (measured
  2026-11-27 on the 2-core development VM (Xeon Sapphire Rapids, CPU only)).

Arguments (after the colon, comma-separated):
  scale=cpu|paper   cpu: 32-token payloads; paper: 256-token payloads.
  mode=copy|reverse copy the payload, or reverse it.
  attention=<name>  any registered attention variant.
  pos=<name>        none | sinusoidal | learned | rope | alibi.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, scale="cpu", mode="copy", attention="dense", pos="rope")
  common.one_of("scale", arg.scale, ("cpu", "paper"))
  common.one_of("mode", arg.mode, ("copy", "reverse"))
  c = common.base_config()
  c.scale = arg.scale
  c.task = "copy"
  c.model = "decoder"
  c.attention = arg.attention
  c.pos = arg.pos
  length = 32 if arg.scale == "cpu" else 256
  c.task_options = dict(mode=arg.mode, length=length, vocab_size=16, num_train=20_000,
                        num_test=1_000)
  c.max_len = 2 * length
  if arg.scale == "cpu":
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 2, 64, 4, 256
    c.batch_size, c.total_steps, c.warmup_steps = 64, 400, 50
    c.learning_rate = 3e-3
    c.log_every, c.eval_every, c.checkpoint_every = 50, 200, 200
  else:
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 4, 256, 8, 1024
    c.batch_size, c.total_steps, c.warmup_steps = 128, 20_000, 1000
    c.learning_rate = 1e-3
  c.attention_options = common.attention_options(c.attention, c.max_len)
  return c
