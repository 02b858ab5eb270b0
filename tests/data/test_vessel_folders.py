"""LES-AV in its own layout, and the multi-camera training records of ``bundles/fundus_vessel_unet``."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medseg.data import LES_AV_LABEL_POSITIVE, les_av_records, multi_camera_records, read_vessel_label


def test_les_av_lists_eleven_photographs_per_split_with_vessel_labels_and_masks(les_av_root):
    for split in ("training", "test"):
        records = les_av_records(les_av_root, split)
        assert [record["id"] for record in records] == [str(i) for i in range(11)]
        assert all(record["label"].endswith(f"/{split}/vessel/{record['id']}.png") for record in records)
        assert all(record["mask"].endswith(f"/{split}/mask/{record['id']}.png") for record in records)


def test_every_labelled_les_av_pixel_is_a_vessel(les_av_root):
    record = les_av_records(les_av_root, "training")[0]
    vessel = read_vessel_label(record["label"], LES_AV_LABEL_POSITIVE)
    stored = np.asarray(Image.open(record["label"]))
    np.testing.assert_array_equal(vessel, stored > 0)
    assert 0.04 < vessel.mean() < 0.15


def test_multi_camera_records_hold_out_validation_from_both_and_never_list_a_test_photograph(drive_root, les_av_root):
    train, validation = multi_camera_records(drive_root, les_av_root, val_drive=4, val_les_av=2, seed=0)
    assert (len(train), len(validation)) == (16 + 9, 4 + 2)
    listed = [record["image"] for record in train + validation]
    assert len(set(listed)) == 31 and not any("/test/" in image for image in listed)
    les_av = [record for record in train + validation if record["id"].startswith("les-av-")]
    assert len(les_av) == 11 and all(record["label_positive"] == list(LES_AV_LABEL_POSITIVE) for record in les_av)
    assert not any("label_positive" in record for record in train + validation if record not in les_av)
