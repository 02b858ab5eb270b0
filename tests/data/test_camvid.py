"""CamVid discovery, class metadata, frequencies, validation and transforms, on the real data set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.data import CLASS_NAMES, IGNORE_INDEX, PALETTE, camvid_records, camvid_transforms, class_frequencies
from medseg.data import validate_camvid
from medseg.data.camvid import median_frequency_weights


@pytest.fixture(scope="module")
def camvid_stats(camvid_root):
    return validate_camvid(camvid_root)


def test_split_sizes_are_367_101_233_with_paired_names(camvid_root):
    counts = {split: len(camvid_records(camvid_root, split)) for split in ("train", "val", "test")}
    assert counts == {"train": 367, "val": 101, "test": 233}
    record = camvid_records(camvid_root, "val")[0]
    assert record["label"].endswith(f"valannot/{record['id']}.png")
    assert record["image"].endswith(f"val/{record['id']}.png")


def test_every_label_is_360x480_with_values_in_0_to_11(camvid_stats):
    assert len(camvid_stats) == 701
    assert {(s.height, s.width) for s in camvid_stats} == {(360, 480)}
    assert all(len(s.class_counts) == IGNORE_INDEX + 1 for s in camvid_stats)  # bincount would grow past 11
    totals = np.sum([s.class_counts for s in camvid_stats], axis=0)
    assert (totals > 0).all()  # every class and void occurs somewhere


def test_class_metadata_matches_segnet():
    assert len(CLASS_NAMES) == 11 and CLASS_NAMES[0] == "Sky" and CLASS_NAMES[10] == "Bicyclist"
    assert IGNORE_INDEX == 11
    assert PALETTE.shape == (12, 3) and PALETTE.dtype == np.uint8
    assert len({tuple(colour) for colour in PALETTE}) == 12


def test_class_frequencies_exclude_void_and_match_the_label_counts(camvid_root, camvid_stats):
    train = camvid_records(camvid_root, "train")
    frequencies = class_frequencies(train)
    counts = np.sum([s.class_counts for s in camvid_stats if s.split == "train"], axis=0)[:IGNORE_INDEX]
    np.testing.assert_allclose(frequencies, counts / counts.sum())
    assert frequencies.shape == (11,) and frequencies.sum() == pytest.approx(1.0)
    assert CLASS_NAMES[int(frequencies.argmax())] == "Road"
    weights = median_frequency_weights(frequencies)
    assert weights[CLASS_NAMES.index("Bicyclist")] > 1 > weights[CLASS_NAMES.index("Road")]


def test_eval_transforms_give_whole_frames_with_integer_labels(camvid_root):
    sample = camvid_transforms("eval")(camvid_records(camvid_root, "test")[0])
    assert sample["image"].shape == (3, 360, 480) and sample["image"].dtype == torch.float32
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["label"].shape == (1, 360, 480) and sample["label"].dtype == torch.int64
    assert set(sample["label"].unique().tolist()) <= set(range(IGNORE_INDEX + 1))


def test_train_transforms_crop_image_and_label_together(camvid_root):
    record = camvid_records(camvid_root, "train")[0]
    whole = camvid_transforms("eval")(record)
    crop = camvid_transforms("train", crop_size=(64, 96))(record)
    assert crop["image"].shape == (3, 64, 96) and crop["label"].shape == (1, 64, 96)
    assert set(crop["label"].unique().tolist()) <= set(whole["label"].unique().tolist())


def test_a_folders_own_void_value_becomes_the_ignored_index_and_counts_in_no_class(tmp_path):
    from PIL import Image

    label = np.array([[0, 255, 3], [10, 255, 255]], np.uint8)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "frame.png")
    Image.fromarray(label).save(tmp_path / "frame_label.png")
    record = {"image": str(tmp_path / "frame.png"), "label": str(tmp_path / "frame_label.png")}
    mapped = camvid_transforms("eval", void_value=255)(record)["label"]
    assert mapped.dtype == torch.int64
    assert mapped[0].tolist() == [[0, IGNORE_INDEX, 3], [10, IGNORE_INDEX, IGNORE_INDEX]]
    frequencies = class_frequencies([record], void_value=255)
    assert frequencies[[0, 3, 10]].tolist() == pytest.approx([1 / 3] * 3) and frequencies.sum() == pytest.approx(1)
