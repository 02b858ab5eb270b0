"""The widening of trained weights (how much wider than the label convention they mark vessels on a shrunk
photograph), measured on labelled photographs as `medseg bundle ship --new-bundle` measures it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.data import drive_records
from medseg.engines.width import WIDENING_GRID, measure_widening, zero_crossing
from medseg.inference import load_model

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "drive_vessel_unet"


def test_the_widening_is_where_the_width_error_crosses_zero_interpolated():
    assert zero_crossing([0.0, 0.1, 0.2], np.array([0.3, 0.1, -0.1])) == pytest.approx(0.15)
    assert zero_crossing([0.0, 0.1, 0.2], np.array([0.3, 0.0, -0.1])) == pytest.approx(0.1)


def test_a_widening_outside_the_grid_is_the_grids_end():
    assert zero_crossing([0.0, 0.1, 0.2], np.array([-0.1, -0.2, -0.3])) == 0.0  # narrower at every widening
    assert zero_crossing([0.0, 0.1, 0.2], np.array([0.5, 0.4, 0.3])) == 0.2  # wider at every widening


@pytest.fixture(scope="module")
def shipped_model():
    return load_model(BUNDLE)


def test_photographs_that_are_not_shrunk_measure_no_widening(shipped_model, synthetic_drive):
    records = drive_records(synthetic_drive, "training")  # as wide as DRIVE's FOV: left at their scale
    assert measure_widening(shipped_model, records) is None


def test_photographs_twice_the_training_width_measure_a_widening_where_the_width_error_crosses_zero(
        shipped_model, synthetic_drive):
    records = drive_records(synthetic_drive, "training")
    halved = shipped_model.with_settings(training_fov_width=shipped_model.settings.training_fov_width / 2)
    measured = measure_widening(halved, records)
    assert measured is not None and measured.photographs == len(records)
    errors = np.array(measured.errors)
    assert len(errors) == len(WIDENING_GRID)
    assert (np.diff(errors) <= 1e-9).all()  # more erosion, never wider
    assert measured.widening == zero_crossing(WIDENING_GRID, errors)
