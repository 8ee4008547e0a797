"""ListOps (Long Range Arena, Tay et al. 2020) with an encoder classifier.

Command:
  python -m experiments.train --config=configs/tasks/listops.py:scale=cpu --workdir=/tmp/listops
Runtime: about 4 min 20 s (259 s wall, 600 steps at about 2.5 steps/s, including 8 s to
  generate the data), on 2 CPU cores (scale=cpu).
Expected: final eval accuracy 0.321 against 0.155 for the majority class (label 0) of
  the test split; 0.32-0.33 from step 200 on. LRA's Transformer reaches 0.36-0.37 at
  paper scale (measured 2026-11-27 on the 2-core development VM (Xeon Sapphire Rapids,
  CPU only)).

Arguments (after the colon, comma-separated):
  scale=cpu|paper   cpu: lengths 32-512, a 2-layer encoder, a few minutes;
                    paper: LRA's setting (lengths 500-2000, 96k examples,
                    4 layers, d_model 512, 5k steps), for an accelerator.
  form=brackets|lra brackets: "]" tokens kept (our form); lra: LRA's tokens
                    (no "]"), and at scale=paper LRA's Transformer as
                    lra_benchmarks/listops/configs/base_listops_config.py
                    sets it: 6 layers, 8 heads, d_model 512, MLP 2048, a CLS
                    token, batch 32, 5000 steps, learning rate 0.05 x linear
                    warmup (1000 steps) x rsqrt decay (a peak of
                    0.05 / sqrt(1000)), weight decay 0.1, length 2000.
  attention=<name>  any registered attention variant.
  pos=<name>        none | sinusoidal | learned | rope | alibi.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, scale="cpu", form="brackets", attention="dense", pos="learned")
  common.one_of("scale", arg.scale, ("cpu", "paper"))
  common.one_of("form", arg.form, ("brackets", "lra"))
  c = common.base_config()
  c.scale = arg.scale
  c.task = "listops"
  c.model = "classifier"
  c.pooling = "mean"
  c.attention = arg.attention
  c.pos = arg.pos
  if arg.scale == "cpu":
    c.task_options = dict(min_len=32, max_len=512, max_depth=10, max_args=10,
                          num_train=20_000, num_test=1_000)
    c.max_len = 512
    # Two heads of 32, not four of 16: on CPU the L x L softmax costs per head.
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 2, 64, 2, 128
    c.batch_size, c.total_steps, c.warmup_steps = 16, 600, 60
    c.learning_rate, c.weight_decay = 1e-3, 0.01
    c.log_every, c.eval_every, c.checkpoint_every = 50, 200, 200
  else:
    c.task_options = dict(min_len=500, max_len=2000, max_depth=10, max_args=10,
                          num_train=96_000, num_test=2_000)
    c.max_len = 2000
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 4, 512, 8, 1024
    c.batch_size, c.total_steps, c.warmup_steps = 32, 5000, 1000
    c.learning_rate, c.weight_decay = 5e-2 / 512 ** 0.5, 0.1
    c.schedule = "rsqrt"
    c.log_every, c.eval_every, c.checkpoint_every = 100, 1000, 1000
    if arg.form == "lra":
      c.num_layers, c.mlp_dim, c.pooling = 6, 2048, "cls"
      c.learning_rate = 0.05 / 1000 ** 0.5
  c.task_options["form"] = arg.form
  c.attention_options = common.attention_options(c.attention, c.max_len)
  return c
