"""DRIVE discovery, validation split and full validation, on the real data set."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data import drive_records, read_binary, split_validation, validate_drive


@pytest.fixture(scope="module")
def drive_stats(drive_root):
    return validate_drive(drive_root)


def test_records_pair_every_image_with_its_labels_and_mask(drive_root):
    training, test = drive_records(drive_root, "training"), drive_records(drive_root, "test")
    assert [r["id"] for r in training] == [f"{i:02d}" for i in range(21, 41)]
    assert [r["id"] for r in test] == [f"{i:02d}" for i in range(1, 21)]
    record = test[0]
    assert record["image"].endswith("test/images/01_test.tif")
    assert record["label"].endswith("test/1st_manual/01_manual1.gif")
    assert record["label2"].endswith("test/2nd_manual/01_manual2.gif")
    assert record["mask"].endswith("test/mask/01_test_mask.gif")
    assert "label2" not in training[0]


def test_all_40_images_are_584x565_with_drive_like_vessel_and_fov_fractions(drive_stats):
    assert len(drive_stats) == 40
    for stats in drive_stats:
        assert (stats.height, stats.width) == (584, 565)
        assert stats.label_values == (0, 255)
        assert 0.06 <= stats.vessel_fraction <= 0.12, stats
        assert 0.67 <= stats.fov_fraction <= 0.70, stats
    second = [s.vessel_fraction_2nd for s in drive_stats if s.split == "test"]
    assert len(second) == 20 and all(0.06 <= f <= 0.11 for f in second)


def test_second_observer_palette_gif_binarises_to_indices(drive_root):
    from PIL import Image

    record = drive_records(drive_root, "test")[0]
    with Image.open(record["label2"]) as raw:
        assert raw.mode == "P"
        indices = np.asarray(raw)
    np.testing.assert_array_equal(read_binary(record["label2"]), indices > 0)


def test_split_validation_is_deterministic_disjoint_and_order_independent(drive_root):
    records = drive_records(drive_root, "training")
    train, val = split_validation(records, n_val=4, seed=7)
    assert len(train) == 16 and len(val) == 4
    assert {r["id"] for r in train}.isdisjoint(r["id"] for r in val)
    assert sorted(r["id"] for r in train + val) == [r["id"] for r in records]
    assert split_validation(list(reversed(records)), n_val=4, seed=7) == (train, val)
    assert split_validation(records, val_fraction=0.2, seed=7) == (train, val)
    other_seeds = [split_validation(records, n_val=4, seed=seed)[1] for seed in range(8, 12)]
    assert any(other != val for other in other_seeds)


@pytest.mark.parametrize("n_val", [0, 20])
def test_split_validation_keeps_both_sides_non_empty(drive_root, n_val):
    with pytest.raises(ValueError, match="validation size"):
        split_validation(drive_records(drive_root, "training"), n_val=n_val)
