"""Long Range Arena's Text task: IMDB sentiment from the reviews' bytes, with an encoder classifier.

The data is TFDS's `imdb_reviews`, read as it is from the data_dir, never
downloaded here (attention_research/data/lra_text.py): prepare it once on a
machine with network with
  tfds build imdb_reviews --file_format=array_record --data_dir=DIR
and pass --config.data_dir=DIR (local, or gs://).

Command:
  python -m experiments.train --config=configs/tasks/lra_text.py:scale=cpu --workdir=/tmp/lra_text --config.data_dir=DIR
Runtime: not measured here: this machine has no copy of IMDB (the task is tested on a
  small fixture written by TFDS's own builder, tests/test_lra.py).
Expected: not measured here. LRA's Table 1 gives its Transformer 64.27 accuracy on Text
  (4K bytes, paper scale).

Arguments (after the colon, comma-separated):
  scale=cpu|paper   cpu: 1000 bytes, a 2-layer encoder, 600 steps of 16, minutes;
                    paper: LRA's Transformer as lra_benchmarks/text_classification/
                    configs/base_tc_config.py sets it: 4 layers, 4 heads, d_model
                    256, MLP 1024, a CLS token, batch 32, 20,000 steps, learning
                    rate 0.05 x linear warmup (8000 steps) x rsqrt decay (a peak
                    of 0.05 / sqrt(8000)), weight decay 0.1, for an accelerator.
  length=<bytes>    bytes a review keeps; default 1000 at cpu (LRA's released config),
                    4096 at paper (the paper's 4K).
  attention=<name>  any registered attention variant.
  pos=<name>        none | sinusoidal | learned | rope | alibi.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, scale="cpu", length=0, attention="dense", pos="learned")
  common.one_of("scale", arg.scale, ("cpu", "paper"))
  c = common.base_config()
  c.scale = arg.scale
  c.task = "lra_text"
  c.model = "classifier"
  c.attention = arg.attention
  c.pos = arg.pos
  c.max_len = arg.length or (1000 if arg.scale == "cpu" else 4096)
  c.task_options = dict(max_len=c.max_len)
  if arg.scale == "cpu":
    c.pooling = "mean"
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 2, 64, 2, 128
    c.batch_size, c.total_steps, c.warmup_steps = 16, 600, 60
    c.learning_rate, c.weight_decay = 1e-3, 0.01
    c.log_every, c.eval_every, c.checkpoint_every = 50, 200, 200
  else:
    c.pooling = "cls"
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 4, 256, 4, 1024
    c.batch_size, c.total_steps, c.warmup_steps = 32, 20_000, 8000
    c.learning_rate, c.weight_decay, c.schedule = 0.05 / 8000 ** 0.5, 0.1, "rsqrt"
    c.log_every, c.eval_every, c.checkpoint_every = 100, 1000, 1000
  c.attention_options = common.attention_options(c.attention, c.max_len)
  return c
