"""Byte-level language modelling on the Python standard library's source, with a decoder.

The corpus is on every machine (attention_research/data/stdlib_bytes.py): the
stdlib's .py files, split by file into train and test, read as bytes. Results
are in bits per byte (`final_eval.bits_per_token`) and depend on the corpus,
which this config records in the task's options (`python_version`, `corpus`: a
digest of the files); a run resumed where the stdlib differs is refused.

Command:
  python -m experiments.train --config=configs/tasks/stdlib_bytes.py:scale=cpu --workdir=/tmp/stdlib_bytes
Runtime: about 4 min 10 s (246 s wall, 1000 steps at about 4.1 steps/s, including the
  data), on 2 CPU cores (scale=cpu).
Expected: final eval 1.92 bits per byte (2.10 at step 500; 8.0 is uniform over the 257
  tokens), next-byte accuracy 0.668, on Python 3.12.1's stdlib (corpus 637405f354adc2cb;
  another interpreter's corpus gives other numbers) (measured 2026-12-03 on the 2-core
  development VM (AMD EPYC, CPU only)).

Arguments (after the colon, comma-separated):
  scale=cpu|paper   cpu: 256 bytes of context, a 2-layer decoder of width 128;
                    paper: 1024 bytes, 6 layers of width 512, 8 heads, 20k steps.
  attention=<name>  any registered attention variant.
  pos=<name>        none | sinusoidal | learned | rope | alibi.
"""

import platform

from attention_research.data import stdlib_bytes
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, scale="cpu", attention="dense", pos="rope")
  common.one_of("scale", arg.scale, ("cpu", "paper"))
  c = common.base_config()
  c.scale = arg.scale
  c.task = "stdlib_bytes"
  c.model = "decoder"
  c.attention = arg.attention
  c.pos = arg.pos
  if arg.scale == "cpu":
    c.task_options = dict(length=256, num_train=20_000, num_test=200)
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 2, 128, 4, 512
    c.batch_size, c.total_steps, c.warmup_steps = 16, 1000, 100
    c.learning_rate = 2e-3
    c.log_every, c.eval_every, c.checkpoint_every = 100, 500, 500
  else:
    c.task_options = dict(length=1024, num_train=200_000, num_test=1_000)
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 6, 512, 8, 2048
    c.batch_size, c.total_steps, c.warmup_steps = 64, 20_000, 1000
    c.learning_rate = 6e-4
    c.log_every, c.eval_every, c.checkpoint_every = 100, 1000, 1000
  # Recorded in the run's config.json: which stdlib the numbers are on.
  c.task_options.update(python_version=platform.python_version(),
                        corpus=stdlib_bytes.corpus_digest())
  c.max_len = c.task_options["length"]
  c.attention_options = common.attention_options(c.attention, c.max_len)
  return c
