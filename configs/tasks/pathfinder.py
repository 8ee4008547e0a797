"""Pathfinder (Long Range Arena; Linsley et al. 2018): are the two dots on one contour?

Images are read as pixel sequences (attention_research/data/pathfinder.py,
sample grids in docs/data/): 32x32 (1024 tokens) for Pathfinder, 128x128
(16384) for Path-X (size=128), where every model in LRA's Table 1 failed.

Command:
  python -m experiments.train --config=configs/tasks/pathfinder.py:scale=cpu --workdir=/tmp/pathfinder
Runtime: about 5 min 40 s (336 s wall, 1500 steps at about 5.6 steps/s, including 41 s to
  generate the data), on 2 CPU cores (scale=cpu).
Expected: final eval accuracy 0.793 (0.627 at step 500) against 0.5 for chance (the classes
  are balanced exactly). At LRA's 32x32 (4 segments of 4, one distractor), a 1-layer model
  of this width was still at 0.50 eval accuracy after 200 steps; LRA's Transformer reaches
  71.40 on Pathfinder after 200 epochs and fails Path-X (Table 1). Measured 2026-12-03 on the 2-core development VM (AMD EPYC, CPU only).

Arguments (after the colon, comma-separated):
  scale=cpu|paper   cpu: 16x16 images (256 tokens), contours of 3 short segments, no
                    distractors, a 2-layer encoder, minutes (size is ignored);
                    paper: LRA's Transformer setting (lra_benchmarks/image/configs/
                    pathfinder32/base_pathfinder32_config.py and transformer_base.py:
                    1 layer, 4 heads, d_model 128, qkv 64, MLP 128, dropout 0.2,
                    attention dropout 0.1, mean pooling, fixed sinusoidal positions,
                    batch 512, learning rate 1e-3 with a one-epoch linear warmup and
                    cosine decay over 200 epochs of 160k images, no weight decay, no
                    clipping), for an accelerator.
  size=32|128       Pathfinder or Path-X (pathfinder.PRESETS).
  attention=<name>  any registered attention variant.
  pos=<name>        none | sinusoidal | learned | rope | alibi.
"""

from attention_research.data import pathfinder
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, scale="cpu", size=32, attention="dense", pos="sinusoidal")
  common.one_of("scale", arg.scale, ("cpu", "paper"))
  common.one_of("size", arg.size, (32, 128))
  c = common.base_config()
  c.scale = arg.scale
  c.task = "pathfinder"
  c.model = "classifier"
  c.pooling = "mean"
  c.attention = arg.attention
  c.pos = arg.pos
  # image_size stated even where it is the default: tables tell Pathfinder from Path-X by it.
  preset = {"image_size": arg.size, **pathfinder.PRESETS["pathfinder" if arg.size == 32 else
                                                          "pathx"]}
  c.max_len = arg.size ** 2
  if arg.scale == "cpu":
    # At 32x32 a small model stays at chance for 600 steps (measured; LRA trains
    # 200 epochs): at cpu scale the images are 16x16 with short contours and no
    # distractors, an easier instance of the same question that trains in minutes.
    c.task_options = dict(preset, image_size=16, contour_length=3, segment_length=3,
                          num_distractors=0, num_train=20_000, num_test=1_000)
    c.max_len = 16 * 16
    c.num_layers, c.d_model, c.num_heads, c.mlp_dim = 2, 64, 2, 128
    c.batch_size, c.total_steps, c.warmup_steps = 32, 1500, 60
    c.learning_rate, c.weight_decay = 1e-3, 0.0
    c.log_every, c.eval_every, c.checkpoint_every = 100, 500, 500
  else:
    epoch = 160_000 // 512
    c.task_options = dict(preset, num_train=160_000, num_test=20_000)
    c.num_layers, c.d_model, c.num_heads, c.head_dim, c.mlp_dim = 1, 128, 4, 16, 128
    c.dropout, c.attention_dropout = 0.2, 0.1
    c.batch_size, c.total_steps, c.warmup_steps = 512, 200 * epoch, epoch
    c.learning_rate, c.weight_decay, c.grad_clip = 1e-3, 0.0, 0.0
    c.log_every, c.eval_every, c.checkpoint_every = 100, epoch, 10 * epoch
  c.attention_options = common.attention_options(c.attention, c.max_len)
  return c
