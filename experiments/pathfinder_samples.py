"""Writes a PNG grid of Pathfinder images, each titled with its label, to check by eye.

    python -m experiments.pathfinder_samples --preset=pathfinder --out=docs/data/pathfinder.png
    python -m experiments.pathfinder_samples --preset=pathx --out=docs/data/pathx.png

The images are the task's own (attention_research/data/pathfinder.py, the
train split's first --count examples), so what is drawn is what a model reads.
"""

import json

from absl import app
from absl import flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from attention_research import data
from attention_research.data import pathfinder

_PRESET = flags.DEFINE_enum("preset", "pathfinder", sorted(pathfinder.PRESETS),
                            "Pathfinder (32x32) or Path-X (128x128), as LRA sizes them.")
_OPTIONS = flags.DEFINE_string("task_options", "{}", "JSON: options over the preset's.")
_COUNT = flags.DEFINE_integer("count", 12, "Images, from the train split's first.")
_OUT = flags.DEFINE_string("out", None, "The PNG to write.")
flags.mark_flags_as_required(["out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  options = data.resolve_options(
      "pathfinder", {**pathfinder.PRESETS[_PRESET.value], **json.loads(_OPTIONS.value)})
  cols = min(_COUNT.value, 6)
  rows = -(-_COUNT.value // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.5 * rows), squeeze=False)
  for index, ax in enumerate(axes.flat):
    ax.axis("off")
    if index < _COUNT.value:
      image, label = pathfinder.render(options, "train", index)
      ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
      ax.set_title(f"#{index}: {'connected' if label else 'apart'}", fontsize=9)
  fig.suptitle(f"pathfinder {options['image_size']}x{options['image_size']}: "
               + ", ".join(f"{k}={options[k]}" for k in ("contour_length", "segment_length",
                                                          "dash", "gap", "num_distractors")),
               fontsize=9)
  fig.tight_layout()
  fig.savefig(_OUT.value, dpi=100)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
