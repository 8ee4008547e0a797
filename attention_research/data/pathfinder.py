"""Pathfinder: are the two dots joined by one dashed contour? A Long Range Arena task.

Linsley et al. 2018 ("Learning long-range spatial dependencies with
horizontal gated recurrent units") made Pathfinder to test long-range
spatial reasoning; Long Range Arena (Tay et al. 2021) reads its images as
pixel sequences: 32x32 (1024 tokens) for Pathfinder and 128x128 (16384) for
Path-X, where every model in its Table 1 failed. This is our own generator
in that design, deterministic given the options and the seed:

- A contour is a chain of `contour_length` short straight segments
  (Linsley's "paddles"), each turning by at most `max_turn` degrees from the
  last, drawn as dashes: `dash` pixels on, `gap` pixels off, along the path.
- Every image has two main contours and `num_distractors` more. Label 1
  (connected): both dots sit on the two ends of the same main contour.
  Label 0: one dot on an end of each main contour. Both classes have two
  dots and the same number of contours of the same lengths, so counting
  pixels or dots does not solve it; following a contour does.
- Contours (and the dots' squares at their ends) keep `2 * bridge + 2`
  pixels apart (chessboard distance), where `bridge = ceil((gap + 1) / 2)`,
  so the label can be read back from the pixels alone: grow every lit pixel
  by `bridge` and the dashes of a contour join (a gap spans at most
  `gap + 1` pixels) while contours stay apart, not even touching (the tests
  do exactly that).
- Labels alternate with the example index (exactly balanced); everything
  else is drawn from the example's own random stream.

Pixels are 0 (background) or 255 (contours and dots, which are filled
squares of side 2 * dot_radius + 1); a token is the pixel value + 1, so 0
stays padding and the vocabulary is 257, in raster order. Difficulty grows
with `contour_length` (Linsley's 6, 9 and 14 paddles). LRA's images are
anti-aliased grey levels from Linsley's renderer; these are binary, which
changes what a model sees locally but not the long-range question.
"""

import dataclasses
import math

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from attention_research.data import common

NAME = "pathfinder"
KIND = "classification"
ON = 255
# LRA's two sizes (Tay et al. 2021, section 3.4): Pathfinder at 32x32 and
# Path-X at 128x128, with contours long enough to cross most of the image.
PRESETS = {
    "pathfinder": {},
    "pathx": dict(image_size=128, contour_length=14, segment_length=6, dash=3, gap=1,
                  num_distractors=2, dot_radius=2),
}
_PLACEMENT_TRIES = 256   # tries to place one contour before the image starts over
_BATCH = 32              # tries drawn at once
_RESTARTS = 50


@dataclasses.dataclass(eq=False)
class PathfinderConfig(tfds.core.BuilderConfig):
  image_size: int = 32       # pixels a side: 32 (Pathfinder), 128 (Path-X)
  contour_length: int = 6    # segments (paddles) a contour
  segment_length: int = 4    # pixels a segment spans
  dash: int = 2              # pixels drawn, then `gap` skipped, along a contour
  gap: int = 1
  max_turn: int = 30         # degrees a segment may turn from the last
  num_distractors: int = 1   # contours without dots
  dot_radius: int = 1
  num_train: int = 10_000
  num_test: int = 1_000
  seed: int = 0


def check_options(options) -> dict:
  """Validated options (all fields of PathfinderConfig) or a ValueError naming the field."""
  opts = {name: common.positive_int(NAME, name, options[name])
          for name in ("image_size", "contour_length", "segment_length", "dash", "gap")}
  opts["max_turn"] = common.non_negative_int(NAME, "max_turn", options["max_turn"])
  if opts["max_turn"] > 180:
    raise ValueError(f"{NAME}: option `max_turn` must be in [0, 180] degrees, got "
                     f"{opts['max_turn']}")
  opts["num_distractors"] = common.non_negative_int(NAME, "num_distractors",
                                                    options["num_distractors"])
  opts["dot_radius"] = common.non_negative_int(NAME, "dot_radius", options["dot_radius"])
  span = opts["contour_length"] * opts["segment_length"]
  if span >= 2 * opts["image_size"]:
    raise ValueError(f"{NAME}: option `contour_length` x `segment_length` = {span} pixels must "
                     f"be less than 2 x image_size = {2 * opts['image_size']}")
  return {**opts, **common.check_common(NAME, options)}


def vocab_size(options) -> int:
  return ON + 2


def sequence_length(options) -> int:
  """Pixels in every image."""
  return options["image_size"] ** 2


def num_classes(options) -> int:
  return 2


def bridge(options) -> int:
  """How far (chessboard pixels) lit pixels must grow to join a contour's dashes."""
  return math.ceil((options["gap"] + 1) / 2)


def generate(options, split, index) -> dict:
  """Example `index` of `split`: {"inputs": int32 [image_size ** 2], "label": 0 or 1}."""
  image, label = render(options, split, index)
  return {"inputs": image.reshape(-1).astype(np.int32) + 1, "label": label}


def render(options, split, index):
  """(uint8 image [size, size], label) of example `index` of `split`."""
  rng = common.example_rng(options["seed"], split, index)
  label = index % 2
  for _ in range(_RESTARTS):  # a crowded draw starts the image over (rare at the defaults)
    found = _draw(options, rng, label)
    if found is not None:
      return found, label
  raise ValueError(f"{NAME}: no room for {2 + options['num_distractors']} contours of "
                   f"{options['contour_length']} x {options['segment_length']} pixels, "
                   f"{2 * bridge(options) + 2} pixels apart, in {options['image_size']}x"
                   f"{options['image_size']}: lower `num_distractors` or `contour_length`")


def _draw(options, rng, label):
  """The image, or None where a contour found no room."""
  size, r = options["image_size"], options["dot_radius"]
  # Grown by `bridge` each, two contours this far apart do not touch (8-connected).
  keep_out = 2 * bridge(options) + 1
  taken = np.zeros((size, size), bool)      # contours and their ends' dots, grown by keep_out
  image = np.zeros((size, size), np.uint8)
  ends = []
  for _ in range(2 + options["num_distractors"]):
    points = _place(options, rng, taken)
    if points is None:
      return None
    image[points[:, 0], points[:, 1]] = ON
    drawn = np.zeros((size, size), bool)
    drawn[points[:, 0], points[:, 1]] = True
    for y, x in (points[0], points[-1]):  # where a dot may go
      drawn[y - r:y + r + 1, x - r:x + r + 1] = True
    taken |= _grow(drawn, keep_out)
    ends.append((points[0], points[-1]))
  dots = [ends[0][0], ends[0][1]] if label == 1 else [ends[0][0], ends[1][0]]
  for y, x in dots:
    image[y - r:y + r + 1, x - r:x + r + 1] = ON
  return image


def _place(options, rng, taken):
  """The lit pixels [n, 2] of a contour, end to end, clear of `taken`; None if
  none was found in _PLACEMENT_TRIES tries (drawn _BATCH at a time)."""
  size, r = options["image_size"], options["dot_radius"]
  for _ in range(_PLACEMENT_TRIES // _BATCH):
    paths = _paths(options, rng, _BATCH)                                  # [k, n, 2]
    # Starts that keep each whole contour, and a dot's square at each end, inside.
    low, high = r - paths.min(1), size - 1 - r - paths.max(1)            # [k, 2]
    fits = (low <= high).all(-1)
    points = np.rint(rng.uniform(low, np.maximum(low, high))[:, None] + paths).astype(np.int64)
    fits &= ((points >= r) & (points < size - r)).all((1, 2))
    points = np.clip(points, 0, size - 1)
    fits &= ~taken[points[..., 0], points[..., 1]].any(-1)
    for i in np.flatnonzero(fits):
      ends = (points[i, 0], points[i, -1])
      if not any(taken[y - r:y + r + 1, x - r:x + r + 1].any() for y, x in ends):
        return points[i]
  return None


def _paths(options, rng, k):
  """k dashed contours' lit points [k, n, 2] (float y, x), in order along each, from
  (0, 0): steps of one pixel, turning at each segment's start."""
  n, length = options["contour_length"], options["segment_length"]
  turn = math.radians(options["max_turn"])
  angles = rng.uniform(0, 2 * math.pi, size=(k, 1)) + np.concatenate(
      [np.zeros((k, 1)), np.cumsum(rng.uniform(-turn, turn, size=(k, n - 1)), axis=1)], axis=1)
  angle = np.repeat(angles, length, axis=1)                               # [k, steps]
  steps = np.stack([np.sin(angle), np.cos(angle)], axis=-1)
  position = np.concatenate([np.zeros((k, 1, 2)), np.cumsum(steps, axis=1)[:, :-1]], axis=1)
  step = np.arange(n * length)
  lit = (step % (options["dash"] + options["gap"]) < options["dash"]) | (step == step[-1])
  return position[:, lit]  # the last step ends a dash, where a dot may sit


def _grow(mask, radius):
  """`mask` grown by `radius` pixels in chessboard distance (a square neighbourhood)."""
  n = mask.shape[0]
  padded = np.pad(mask, radius)
  out = np.zeros_like(mask)
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      out |= padded[dy:dy + n, dx:dx + n]
  return out


class Pathfinder(common.GeneratedBuilder, skip_registration=True):
  """Are the two dots on one contour? Options in PathfinderConfig."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  code_path = epath.Path(__file__)  # where TFDS looks for checksums
  generate = staticmethod(generate)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.classification_features(2),
        supervised_keys=("inputs", "label"))
