"""Pathfinder's generator (attention_research/data/pathfinder.py): its labels read back
from the rendered pixels by an independent connectivity check, balanced classes that
pixel counts cannot tell apart, and its option errors."""

import numpy as np
import pytest
from scipy import ndimage

from attention_research import data
from attention_research.data import pathfinder

PATH_X = pathfinder.PRESETS["pathx"]


def connected_from_pixels(image, options):
  """1 if the two dots are joined by lit pixels, reading the image alone: grow every lit
  pixel by the dash gap's half (scipy's dilation), label 8-connected components, find
  the dots as the centres of full (2r+1)-squares (an erosion), compare their components."""
  r, gap = options["dot_radius"], options["gap"]
  lit = image == pathfinder.ON
  centres = ndimage.binary_erosion(lit, np.ones((2 * r + 1,) * 2), border_value=0)
  reach = -(-(gap + 1) // 2)
  grown = ndimage.binary_dilation(lit, np.ones((2 * reach + 1,) * 2))
  components, _ = ndimage.label(grown, np.ones((3, 3)))
  ys, xs = np.nonzero(centres)
  assert len(ys) == 2, f"found {len(ys)} dots"
  return int(components[ys[0], xs[0]] == components[ys[1], xs[1]])


@pytest.mark.parametrize("overrides, count", [({}, 300), (PATH_X, 40)], ids=["32", "128"])
def test_labels_agree_with_the_pixels_connectivity(overrides, count):
  options = data.resolve_options("pathfinder", overrides)
  for split in ("train", "test"):
    for index in range(count):
      image, label = pathfinder.render(options, split, index)
      assert image.shape == (options["image_size"],) * 2
      assert connected_from_pixels(image, options) == label, (split, index)
      example = pathfinder.generate(options, split, index)
      np.testing.assert_array_equal(example["inputs"], image.reshape(-1).astype(np.int32) + 1)


def test_classes_are_balanced_and_lit_pixels_do_not_tell_them_apart():
  options = data.resolve_options("pathfinder", {})
  rendered = [pathfinder.render(options, "train", i) for i in range(400)]
  labels = np.array([label for _, label in rendered])
  assert labels.sum() == 200 and (labels[::2] == 0).all()
  lit = np.array([(image == pathfinder.ON).sum() for image, _ in rendered])
  # The same contours and dots in both classes: lit pixels differ only by overlaps.
  assert abs(lit[labels == 1].mean() - lit[labels == 0].mean()) < 0.02 * lit.mean()
  # And a contour's pixels do differ from image to image.
  assert len({image.tobytes() for image, _ in rendered}) == 400


def test_sizes_and_vocabulary():
  assert data.sequence_length("pathfinder", {}) == 1024
  assert data.sequence_length("pathfinder", PATH_X) == 128 * 128
  assert data.vocab_size("pathfinder", {}) == 257  # 256 pixel values + padding
  assert data.num_classes("pathfinder", {}) == 2


@pytest.mark.parametrize("overrides, message", [
    (dict(max_turn=200), r"option `max_turn` must be in \[0, 180\] degrees, got 200"),
    (dict(dash=0), r"option `dash` must be a positive integer, got 0"),
    (dict(contour_length=20, segment_length=4),
     r"`contour_length` x `segment_length` = 80 pixels must be less than 2 x image_size = 64"),
])
def test_bad_options_are_one_line_errors(overrides, message):
  with pytest.raises(ValueError, match=message):
    data.resolve_options("pathfinder", overrides)


def test_an_image_with_no_room_is_an_error_naming_what_to_lower():
  options = data.resolve_options("pathfinder", dict(num_distractors=12))
  with pytest.raises(ValueError, match=r"pathfinder: no room for 14 contours .*lower "
                                       r"`num_distractors` or `contour_length`"):
    pathfinder.render(options, "train", 0)
