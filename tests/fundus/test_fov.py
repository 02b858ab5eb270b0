"""Automatic FOV estimate of fundus photographs: it never cuts into the retina and measures the disc's width.

Checked against the datasets' own FOV masks on every DRIVE (40) and LES-AV (22) photograph, and on photographs
altered as other cameras alter them: a periphery darkened by vignetting, a disc clipped at the top and bottom
of the frame or at its sides, burnt-in text and a bright rim, and a crop with no dark background at all.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image, ImageDraw

from medseg.fundus import estimate_fov, fov_width

# the acceptance bounds: FOV pixels left outside the estimate, and the error of its width
MAX_MISSED_FRACTION = 0.005
MAX_WIDTH_ERROR = 0.02


def _photographs(drive_root, les_av_root) -> list[tuple[str, np.ndarray, np.ndarray]]:
    pairs = []
    for split in ("training", "test"):
        for image in sorted((drive_root / split / "images").glob("*.tif")):
            pairs.append((image, drive_root / split / "mask" / image.name.replace(".tif", "_mask.gif")))
        for image in sorted((les_av_root / split / "images").glob("*.png")):
            pairs.append((image, les_av_root / split / "mask" / image.name))
    return [
        (f"{image.parent.parent.parent.name}/{image.parent.parent.name}/{image.name}",
         np.asarray(Image.open(image).convert("RGB")), np.asarray(Image.open(mask).convert("L")) > 127)
        for image, mask in pairs
    ]


@pytest.fixture(scope="module")
def photographs(drive_root, les_av_root):
    return _photographs(drive_root, les_av_root)


def missed_fraction(estimated: np.ndarray, expected: np.ndarray) -> float:
    return float((expected & ~estimated).sum() / expected.sum())


def width_error(estimated: np.ndarray, expected_width: float) -> float:
    return abs(fov_width(estimated) / expected_width - 1.0)


def test_the_estimate_keeps_the_whole_fov_and_its_width_on_every_drive_and_les_av_photograph(photographs):
    assert len(photographs) == 62
    failures = []
    for name, image, expected in photographs:
        estimated = estimate_fov(image)
        missed, error = missed_fraction(estimated, expected), width_error(estimated, fov_width(expected))
        if missed > MAX_MISSED_FRACTION or error > MAX_WIDTH_ERROR:
            failures.append(f"{name}: {missed:.2%} of the FOV cut, width off by {error:.2%}")
    assert not failures, "\n".join(failures)


def _vignetted(image: np.ndarray, fov: np.ndarray, darkening: float) -> np.ndarray:
    """The periphery darkened ``darkening`` times at the FOV's edge, smoothly from none at its centre."""
    rows, columns = np.nonzero(fov)
    centre_y, centre_x = rows.mean(), columns.mean()
    radius = fov_width(fov) / 2
    yy, xx = np.mgrid[: fov.shape[0], : fov.shape[1]]
    distance = np.clip(np.hypot(yy - centre_y, xx - centre_x) / radius, 0, 1)
    gain = 1.0 / (1.0 + (darkening - 1.0) * distance**2)
    return (image * gain[..., None]).round().astype(np.uint8)


@pytest.mark.parametrize("darkening", [3.0, 5.0])
def test_a_periphery_darkened_by_vignetting_stays_inside(photographs, darkening):
    for name, image, expected in photographs[::5]:
        estimated = estimate_fov(_vignetted(image, expected, darkening))
        assert missed_fraction(estimated, expected) <= MAX_MISSED_FRACTION, name
        assert width_error(estimated, fov_width(expected)) <= MAX_WIDTH_ERROR, name


def test_a_disc_clipped_at_the_top_and_bottom_of_the_frame_keeps_its_width(photographs):
    for name, image, expected in photographs[::5]:
        rows = np.flatnonzero(expected.any(axis=1))
        middle, half = (rows[0] + rows[-1]) // 2, (rows[-1] - rows[0]) // 3
        clipped = slice(middle - half, middle + half)
        estimated = estimate_fov(image[clipped])
        assert missed_fraction(estimated, expected[clipped]) <= MAX_MISSED_FRACTION, name
        assert width_error(estimated, fov_width(expected)) <= MAX_WIDTH_ERROR, name


@pytest.mark.parametrize("clip", ["left and right", "all four sides"])
def test_a_disc_clipped_at_the_sides_of_the_frame_keeps_its_width(photographs, clip):
    for name, image, expected in photographs[::5]:
        rows, columns = np.flatnonzero(expected.any(axis=1)), np.flatnonzero(expected.any(axis=0))
        half = int(0.4 * fov_width(expected))  # of a disc, 80 percent of its width stays in the frame
        middle_x, middle_y = (columns[0] + columns[-1]) // 2, (rows[0] + rows[-1]) // 2
        clipped = (slice(middle_y - half, middle_y + half) if clip == "all four sides" else slice(None),
                   slice(middle_x - half, middle_x + half))
        estimated = estimate_fov(image[clipped])
        assert missed_fraction(estimated, expected[clipped]) <= MAX_MISSED_FRACTION, name
        assert width_error(estimated, fov_width(expected)) <= MAX_WIDTH_ERROR, name


def _with_text_and_rim(image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Burnt-in white text and a white block in the top-left corner, a bright ring around the disc."""
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    height, width = fov.shape
    draw.rectangle([2, 2, width // 12, height // 30], fill=(255, 255, 255))
    draw.text((4, height // 20), "OD 2026-12-02 45deg", fill=(255, 255, 255))
    altered = np.asarray(canvas).copy()
    rim = fov ^ np.pad(fov, 2)[2:-2, 2:-2] & fov  # the FOV's outermost 2 pixels
    altered[rim] = 250
    return altered


def test_burnt_in_text_in_a_corner_and_a_bright_rim_change_nothing(photographs):
    for name, image, expected in photographs[::5]:
        estimated = estimate_fov(_with_text_and_rim(image, expected))
        assert missed_fraction(estimated, expected) <= MAX_MISSED_FRACTION, name
        assert width_error(estimated, fov_width(expected)) <= MAX_WIDTH_ERROR, name
        assert not estimated[: int(fov_width(expected)) // 40, : expected.shape[1] // 12].all(), name


def test_an_image_with_no_dark_background_is_kept_whole_and_the_log_says_so(photographs, caplog):
    name, image, expected = photographs[0]
    rows, columns = np.nonzero(expected)
    centre_y, centre_x = int(rows.mean()), int(columns.mean())
    side = int(fov_width(expected)) // 3
    crop = image[centre_y - side // 2 : centre_y + side // 2, centre_x - side // 2 : centre_x + side // 2]
    with caplog.at_level(logging.WARNING, logger="medseg.fundus.fov"):
        estimated = estimate_fov(crop, name="retina_crop.png")
    assert estimated.all()
    assert "retina_crop.png: no dark background" in caplog.text


def test_a_flat_image_is_kept_whole():
    assert estimate_fov(np.full((40, 50, 3), 90, dtype=np.uint8)).all()


def test_large_images_are_estimated_on_a_thumbnail_at_full_size():
    yy, xx = np.mgrid[:1500, :1200]
    disc = (yy - 750) ** 2 + (xx - 600) ** 2 < 500**2
    image = np.where(disc[..., None], 150, 8).astype(np.uint8).repeat(3, axis=2)
    estimated = estimate_fov(image)
    assert estimated.shape == (1500, 1200)
    assert missed_fraction(estimated, disc) < 1e-4
    assert abs(fov_width(estimated) - 999) <= 8


def test_a_field_clipped_at_the_sides_that_is_no_disc_is_as_wide_as_it_shows():
    band = np.zeros((300, 400), dtype=bool)
    band[40:] = True  # a straight edge, clipped at the left, right and bottom: no circle to fit
    assert fov_width(band) == 400.0
    yy, xx = np.mgrid[:300, :400]
    assert abs(fov_width((yy - 150) ** 2 + (xx - 200) ** 2 < 230**2) - 461) <= 2  # a disc clipped on all sides


def test_width_of_an_empty_mask_is_zero():
    assert fov_width(np.zeros((5, 5), dtype=bool)) == 0.0
