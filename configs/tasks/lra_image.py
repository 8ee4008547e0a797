"""Long Range Arena's Image task: CIFAR-10 from 1024 grey pixels in a row, with an encoder classifier.

The data is CIFAR-10's python archive, which you download into the manual
directory (attention_research/data/lra_image.py):
  https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz -> DIR/downloads/manual/
and pass --config.data_dir=DIR; it is read once, on first use.

Command:
  python -m experiments.train --config=configs/tasks/lra_image.py:scale=cpu --workdir=/tmp/lra_image --config.data_dir=DIR
Runtime: not measured here: this machine has no copy of CIFAR-10 (the task is tested on
  small files written in CIFAR-10's format, tests/test_lra.py).
Expected: not measured here. LRA's Table 1 gives its Transformer 42.44 accuracy on Image
  (paper scale).

Arguments (after the colon, comma-separated):
  scale=cpu|paper   cpu: a 1-layer encoder of width 64, 600 steps of 32, minutes;
                    paper: LRA's Transformer as lra_benchmarks/image/configs/cifar10/
                    base_cifar10_config.py sets it: 1 layer, 1 head, d_model 32,
                    MLP 64, dropout 0.3, attention dropout 0.2, a CLS token,
                    learned positions, batch 256, learning rate 5e-4 with a
                    one-epoch linear warmup and cosine decay over 200 epochs of
                    45,000 images, no weight decay, no clipping.
  attention=<name>  any registered attention variant.
  pos=<name>        none | sinusoidal | learned | rope | alibi.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, scale="cpu", attention="dense", pos="learned")
  common.one_of("scale", arg.scale, ("cpu", "paper"))
  c = common.base_config()
  c.scale = arg.scale
  c.task = "lra_image"
  c.model = "classifier"
  c.attention = arg.attention
  c.pos = arg.pos
  c.max_len = 32 * 32
  c.task_options = dict(num_train=45_000)
  if arg.scale == "cpu":
    c.pooling = "mean"
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 1, 64, 2, 128
    c.batch_size, c.total_steps, c.warmup_steps = 32, 600, 60
    c.learning_rate, c.weight_decay = 1e-3, 0.0
    c.log_every, c.eval_every, c.checkpoint_every = 50, 200, 200
  else:
    epoch = 45_000 // 256
    c.pooling = "cls"
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 1, 32, 1, 64
    c.dropout, c.attention_dropout = 0.3, 0.2
    c.batch_size, c.total_steps, c.warmup_steps = 256, 200 * epoch, epoch
    c.learning_rate, c.weight_decay, c.grad_clip = 5e-4, 0.0, 0.0
    c.log_every, c.eval_every, c.checkpoint_every = 100, epoch, 10 * epoch
  c.attention_options = common.attention_options(c.attention, c.max_len)
  return c
