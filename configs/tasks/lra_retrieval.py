"""Long Range Arena's Retrieval task: does one paper cite the other, from both papers' bytes (a dual encoder).

The data is LRA's released citation pairs, which you download and put into
the manual directory (attention_research/data/lra_retrieval.py):
  lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv -> DIR/downloads/manual/
and pass --config.data_dir=DIR; they are read once, on first use.

Command:
  python -m experiments.train --config=configs/tasks/lra_retrieval.py:scale=cpu --workdir=/tmp/lra_retrieval --config.data_dir=DIR
Runtime: not measured here: this machine has no copy of LRA's release (the task is tested
  on small files written in its format, tests/test_lra.py).
Expected: not measured here. LRA's Table 1 gives its Transformer 57.46 accuracy on
  Retrieval (paper scale).

Arguments (after the colon, comma-separated):
  scale=cpu|paper   cpu: 1000 bytes a document, a 2-layer encoder, 600 steps of 16;
                    paper: LRA's Transformer as lra_benchmarks/matching/configs/
                    base_match_config.py sets it: 4000 bytes a document, 4 layers,
                    4 heads, d_model 128, MLP 512, a CLS token, batch 32, 5000
                    steps, learning rate 0.05 x linear warmup (8000 steps, longer
                    than the run) x rsqrt decay, weight decay 0.1.
  attention=<name>  any registered attention variant.
  pos=<name>        none | sinusoidal | learned | rope | alibi.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, scale="cpu", attention="dense", pos="learned")
  common.one_of("scale", arg.scale, ("cpu", "paper"))
  c = common.base_config()
  c.scale = arg.scale
  c.task = "lra_retrieval"
  c.model = "dual_encoder"
  c.attention = arg.attention
  c.pos = arg.pos
  c.max_len = 1000 if arg.scale == "cpu" else 4000
  c.task_options = dict(max_len=c.max_len)
  if arg.scale == "cpu":
    c.pooling = "mean"
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 2, 64, 2, 128
    c.batch_size, c.total_steps, c.warmup_steps = 16, 600, 60
    c.learning_rate, c.weight_decay = 1e-3, 0.01
    c.log_every, c.eval_every, c.checkpoint_every = 50, 200, 200
  else:
    c.pooling = "cls"
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 4, 128, 4, 512
    c.batch_size, c.total_steps, c.warmup_steps = 32, 5000, 8000
    c.learning_rate, c.weight_decay, c.schedule = 0.05 / 8000 ** 0.5, 0.1, "rsqrt"
    c.log_every, c.eval_every, c.checkpoint_every = 100, 1000, 1000
  c.attention_options = common.attention_options(c.attention, c.max_len)
  return c
