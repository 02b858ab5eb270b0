"""Widths of predicted vessels against their labels, read along the labels' centre lines."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics.width import vessel_width_sums


def _bar(columns: slice, rows: slice = slice(5, 195)) -> np.ndarray:
    """A vertical vessel in a 200 x 60 image, long enough that its ends weigh little on its width."""
    mask = np.zeros((200, 60), dtype=bool)
    mask[rows, columns] = True
    return mask


def test_a_mask_two_pixels_wider_than_a_straight_label_measures_two_pixels_wider():
    label, wider = _bar(slice(20, 25)), _bar(slice(19, 26))
    inside = np.ones_like(label)
    label_area, same_area, wider_area, length = vessel_width_sums([label, wider], label, inside, reach=3)
    assert label_area / length == pytest.approx(5, abs=0.3)  # the bar's ends round the count a little
    assert same_area == label_area
    assert (wider_area - label_area) / length == pytest.approx(2, abs=0.1)


def test_only_the_vessel_every_mask_detects_is_measured():
    label = _bar(slice(20, 25))
    half = _bar(slice(19, 26), rows=slice(5, 100))  # finds the upper half of the vessel only
    inside = np.ones_like(label)
    *_, whole_length = vessel_width_sums([label], label, inside, reach=3)
    label_area, half_area, length = vessel_width_sums([half], label, inside, reach=3)
    assert length == pytest.approx(whole_length / 2, rel=0.15)
    assert (half_area - label_area) / length == pytest.approx(2, abs=0.2)


def test_pixels_outside_the_measured_region_do_not_count():
    label, wider = _bar(slice(20, 25)), _bar(slice(15, 30))
    inside = np.zeros_like(label)
    inside[:, 10:40] = True
    inside[100:, :] = False
    label_area, wider_area, length = vessel_width_sums([wider], label, inside, reach=6)
    assert 0 < length < 100
    assert (wider_area - label_area) / length == pytest.approx(10, abs=0.5)
