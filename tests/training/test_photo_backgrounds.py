"""The photo kind's backgrounds: crops of real photographs bundled with scikit-image / scikit-learn."""

from __future__ import annotations

import random

import numpy as np
import pytest

from training.photo_backgrounds import PHOTOS, PhotosMissing, photo_background, photo_path, photographs
from training.synthetic import render_sample


def test_every_photograph_is_installed_and_large():
    photos = photographs()
    assert len(photos) == len(PHOTOS) >= 6
    for (pkg, name), photo in zip(PHOTOS, photos):
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3, name
        assert min(photo.shape[:2]) >= 300, name  # crops of 25-60 % are still >= 75 px before resizing


def test_backgrounds_are_fresh_crops_and_values_differ():
    rng = np.random.default_rng(0)
    a, b = photo_background(0, 32, rng), photo_background(0, 32, rng)
    assert a.shape == (32, 32, 3) and a.dtype == np.int16 and 0 <= a.min() and a.max() <= 255
    assert np.abs(a - b).mean() > 5  # two crops of one photograph are not the same picture
    # each value's own photograph shows: grass (value 0) is a grey photograph, the coffee cup (value 3) red-brown
    red_minus_blue = [np.mean([(bg[..., 0] - bg[..., 2]).mean() for bg in (photo_background(v, 32, rng)
                                                                          for _ in range(10))]) for v in (0, 3)]
    assert abs(red_minus_blue[0]) < 5 < 40 < red_minus_blue[1], red_minus_blue

def test_photo_kind_masks_everything_but_the_shape():
    img, mask = render_sample("circle", 1, 48, random.Random(0), kind="photo")
    arr = np.asarray(img).astype(int)
    inside = mask == 0
    assert 0.05 < inside.mean() < 0.5  # the circle is the unmasked part
    grey = arr[inside]
    assert (grey.max(0) - grey.min(0)).max() == 0  # the shape is one flat grey, the background a photograph
    assert arr[~inside].std() > 10


def test_missing_package_says_what_to_install():
    with pytest.raises(PhotosMissing, match="pip install scikit-image scikit-learn"):
        photo_path("robustar_no_such_package", "data/grass.png")
