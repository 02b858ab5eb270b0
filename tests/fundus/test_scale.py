"""The scale of a fundus photograph: the factor to the training width, and the erosion of upsampled edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.fundus import erode, fundus_scale, upsampled_edge_radius


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
    assert upsampled_edge_radius(0.25) == pytest.approx(1.5)
    assert upsampled_edge_radius(0.5) == pytest.approx(0.5)
    assert upsampled_edge_radius(1.0) == upsampled_edge_radius(2.0) == 0.0
