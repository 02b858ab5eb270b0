"""The scale of a fundus photograph: the factor to the training width, the label convention, and the erosion of
upsampled edges that follows from it."""

from __future__ import annotations

import math
import numpy as np
import pytest
import torch

from medseg.fundus import (
    RESAMPLED_VESSEL_WIDENING, erode, fundus_scale, resample, resample_vessel_label, upsampled_edge_radius
)

# Photographs of a straight vessel, PHOTO pixels across, at OFFSETS places spread over the period of the two grids
PHOTO, OFFSETS = 200, 80
WIDTHS = (1.0, 2.5, 5.0, 9.0)  # the vessel's true width, photograph pixels


def test_fundus_scale_is_one_near_the_training_width_and_the_ratio_otherwise():
    fov = np.zeros((100, 700), dtype=bool)
    fov[:, 50:570] = True  # 520 pixels wide
    assert fundus_scale(fov, training_fov_width=540) == 1.0
    assert fundus_scale(fov, training_fov_width=1040) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="empty"):
        fundus_scale(np.zeros((4, 4), dtype=bool), training_fov_width=540)


def test_erosion_moves_a_smooth_edge_inward_by_its_radius_and_raises_nothing():
    columns = torch.arange(60, dtype=torch.float32)
    ramp = ((columns - 30) / 8 + 0.5).clamp(0, 1).expand(2, 40, 60)  # rises along x, 0.5 at x = 30
    for radius in (0.4, 1.5, 2.7):
        eroded = erode(ramp, radius)
        assert (eroded <= ramp).all()
        torch.testing.assert_close(eroded[:, :, 10:50], ((columns[10:50] - radius - 30) / 8 + 0.5).clamp(0, 1)
                                   .expand(2, 40, 40), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="positive"):
        erode(ramp, 0.0)


def test_the_upsampled_edge_radius_is_half_the_difference_of_the_two_pixel_sizes_and_none_without_shrinking():
    assert upsampled_edge_radius(0.25, widening=0.0) == pytest.approx(1.5)
    assert upsampled_edge_radius(0.5, widening=0.0) == pytest.approx(0.5)
    assert upsampled_edge_radius(1.0) == upsampled_edge_radius(2.0) == 0.0


def test_the_network_s_widening_on_a_resampled_photograph_adds_half_of_it_at_the_photograph_s_pixel_size():
    # widening network pixels over both edges: half of it an edge, 1 / f photograph pixels each
    assert upsampled_edge_radius(0.25, widening=0.4) == pytest.approx(1.5 + 0.2 / 0.25)
    assert upsampled_edge_radius(0.5) == pytest.approx(0.5 + RESAMPLED_VESSEL_WIDENING / 2 / 0.5)


def _touched(pixels: int, pixel_size: float, low: float, high: float) -> torch.Tensor:
    """A (1, 4, pixels) label of a vertical vessel spanning [low, high) under the convention (a pixel is vessel
    when the vessel touches it) on a grid of ``pixel_size`` photograph pixels."""
    edges = torch.arange(pixels, dtype=torch.float64) * pixel_size
    return ((edges < high) & (edges + pixel_size > low)).float().expand(1, 4, pixels)


def _vessels(factor: float, widening: float = 0.0):
    """(true width, photograph label, the label drawn at ``factor`` times the photograph's size of the vessel made
    ``widening`` pixels of that grid wider) of vessels at offsets spread evenly over the distance after which both
    grids repeat."""
    size = round(PHOTO * factor)
    period = PHOTO / math.gcd(PHOTO, size)
    margin = widening * PHOTO / size / 2
    for width in WIDTHS:
        for k in range(OFFSETS):
            centre = PHOTO / 2 - period / 2 + (k + 0.5) / OFFSETS * period
            low, high = centre - width / 2, centre + width / 2
            yield width, _touched(PHOTO, 1.0, low, high), _touched(size, PHOTO / size, low - margin, high + margin)


def _edge_to_edge(profile: torch.Tensor) -> float:
    """Width of a 1D probability profile between its 0.5 crossings, read linearly between pixel centres."""
    p = profile.double()
    above = torch.nonzero(p > 0.5).flatten()
    if not len(above):
        return 0.0
    first, last = int(above[0]), int(above[-1])
    right = last + (p[last] - 0.5) / (p[last] - p[last + 1])
    left = first - (p[first] - 0.5) / (p[first] - p[first - 1])
    return float(right - left)


@pytest.mark.parametrize("factor", [0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0, 1.3, 2.0])
def test_a_resampled_label_is_the_label_the_convention_draws_at_that_grid(factor):
    # what a grader would draw at the new grid from the vessel itself, known only through the photograph's label:
    # equal on average over where the vessel lies; for any one vessel, each edge at most a pixel of the new grid
    # apart (the photograph's label has lost where inside its edge pixels the vessel ends)
    for width in WIDTHS:
        errors = [float(resample_vessel_label(photo, drawn.shape[1:]).sum() - drawn.sum()) / 4
                  for true_width, photo, drawn in _vessels(factor) if true_width == width]
        assert abs(np.mean(errors)) <= 0.5, (width, np.mean(errors))
        assert max(map(abs, errors)) <= 2
    photo = next(_vessels(factor))[1]
    assert torch.equal(resample_vessel_label(photo, photo.shape[1:]), photo)


@pytest.mark.parametrize("widening", [0.0, RESAMPLED_VESSEL_WIDENING])
@pytest.mark.parametrize("factor", [0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0])
def test_a_vessel_predicted_on_a_shrunk_photograph_and_eroded_back_is_as_wide_as_its_label(factor, widening):
    # a network that marks the vessels of its grid as the convention draws them, widening of its pixels wider (0:
    # exactly its labels; RESAMPLED_VESSEL_WIDENING: as networks read a resampled photograph), its map resampled
    # back and eroded by the radius that follows: the vessel's width between the map's 0.5 crossings is its
    # label's, within half a pixel on average over where the vessel lies
    radius = upsampled_edge_radius(round(PHOTO * factor) / PHOTO, widening)
    for width in WIDTHS[1:]:
        errors = []
        for true_width, photo, network in _vessels(factor, widening):
            if true_width != width:
                continue
            back = resample(network, (4, PHOTO))
            back = erode(back, radius) if radius else back
            errors.append(_edge_to_edge(back[0, 2]) - float(photo[0, 2].sum()))
        assert abs(np.mean(errors)) <= 0.5, (width, np.mean(errors))


def test_resampling_a_label_bilinearly_at_half_coverage_breaks_the_convention():
    # the rule the convention replaced: a shrunk label keeps its width in proportion, (t + 1) f, not t f + 1
    errors = [float((resample(photo, drawn.shape[1:]) >= 0.5).sum() - drawn.sum()) / 4
              for width, photo, drawn in _vessels(0.15) if width == 9.0]
    assert np.mean(errors) < -0.5
