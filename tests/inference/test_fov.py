"""Automatic FOV estimate of fundus photographs, checked against DRIVE's own FOV masks."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medseg.inference import estimate_fov, fov_width


def test_estimate_matches_the_drive_mask(drive_root):
    image = np.asarray(Image.open(drive_root / "test" / "images" / "01_test.tif"))
    expected = np.asarray(Image.open(drive_root / "test" / "mask" / "01_test_mask.gif").convert("L")) > 127
    estimated = estimate_fov(image)
    dice = 2 * (estimated & expected).sum() / (estimated.sum() + expected.sum())
    assert estimated.shape == expected.shape
    assert dice > 0.97
    assert abs(fov_width(estimated) - fov_width(expected)) <= 10


def test_large_images_are_estimated_on_a_thumbnail_at_full_size():
    yy, xx = np.mgrid[:1500, :1200]
    disc = (yy - 750) ** 2 + (xx - 600) ** 2 < 500**2
    image = np.where(disc[..., None], 150, 8).astype(np.uint8).repeat(3, axis=2)
    estimated = estimate_fov(image)
    assert estimated.shape == (1500, 1200)
    assert (estimated != disc).mean() < 0.005
    assert abs(fov_width(estimated) - 999) <= 4


def test_width_of_an_empty_mask_is_zero():
    assert fov_width(np.zeros((5, 5), dtype=bool)) == 0.0
