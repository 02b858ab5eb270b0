"""Synthetic retinas (DRIVE-like, written in DRIVE's layout) and synthetic 3D tube volumes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medseg.data import drive_records, synthetic_retina, synthetic_volume, validate_drive, write_synthetic_volumes
from medseg.data import write_synthetic_drive
from medseg.data.synthetic import ensure_synthetic_drive


@pytest.fixture(scope="module")
def retina():
    return synthetic_retina(seed=5)


def test_retina_has_drive_shape_types_and_binary_labels(retina):
    image, vessels, fov = retina
    assert image.shape == (584, 565, 3) and image.dtype == np.uint8
    assert vessels.shape == fov.shape == (584, 565)
    assert set(np.unique(vessels)) == {0, 1} and set(np.unique(fov)) == {0, 1}


def test_retina_fractions_look_like_drive():
    for seed in range(3):
        _, vessels, fov = synthetic_retina(seed)
        assert 0.06 <= vessels.mean() <= 0.13, seed
        assert 0.66 <= fov.mean() <= 0.71


def test_vessels_lie_inside_the_fov_and_are_darker_in_green(retina):
    image, vessels, fov = retina
    assert not (vessels & (1 - fov)).any()
    green = image[..., 1].astype(float)
    background = (fov == 1) & (vessels == 0)
    assert green[vessels == 1].mean() < 0.85 * green[background].mean()
    assert image[fov == 0].mean() < 5  # black outside the FOV, as in a fundus photograph


def test_retina_is_determined_by_the_seed(retina):
    again = synthetic_retina(seed=5)
    for a, b in zip(retina, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(retina[1], synthetic_retina(seed=6)[1])


def test_other_sizes_scale_the_geometry():
    image, vessels, fov = synthetic_retina(seed=1, height=128, width=120)
    assert image.shape == (128, 120, 3)
    assert 0.03 <= vessels.mean() <= 0.2 and 0.6 <= fov.mean() <= 0.75


def test_written_folder_is_read_by_the_drive_code_path(synthetic_drive_template):
    assert [r["id"] for r in drive_records(synthetic_drive_template, "test")] == ["01"]
    assert [r["id"] for r in drive_records(synthetic_drive_template, "training")] == ["02", "03"]
    stats = validate_drive(synthetic_drive_template)
    assert all((s.height, s.width, s.label_values) == (584, 565, (0, 255)) for s in stats)
    test = stats[-1]
    assert test.split == "test" and 0 < test.vessel_fraction_2nd < test.vessel_fraction  # misses thin vessels


def test_written_files_use_drive_formats(synthetic_drive_template):
    record = drive_records(synthetic_drive_template, "test")[0]
    modes = {key: Image.open(record[key]).mode for key in ("image", "label", "mask", "label2")}
    assert modes == {"image": "RGB", "label": "L", "mask": "L", "label2": "P"}
    assert set(np.unique(np.asarray(Image.open(record["label2"])))) == {0, 1}
    assert Image.open(record["image"]).info["compression"] == "tiff_lzw"


def test_writing_refuses_a_non_empty_folder_and_leaves_nothing_behind(synthetic_drive_template):
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_synthetic_drive(synthetic_drive_template, n_training=1, n_test=1)
    assert sorted(p.name for p in synthetic_drive_template.parent.iterdir()) == ["drive"]


def test_ensure_generates_once_then_reuses(tmp_path):
    root = ensure_synthetic_drive(tmp_path / "cache", n_training=1, n_test=1, seed=2)
    written = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert len(written) == 7  # 1 training (image, label, mask) + 1 test (image, label, label2, mask)
    assert ensure_synthetic_drive(root, n_training=5, n_test=5) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == written


def test_volume_has_tubes_brighter_than_background():
    volume, label, affine = synthetic_volume(seed=0, shape=(40, 36, 32))
    assert volume.shape == label.shape == (40, 36, 32) and volume.dtype == np.float32
    assert set(np.unique(label)) == {0, 1} and 0.005 < label.mean() < 0.3
    assert volume[label == 1].mean() > volume[label == 0].mean() + 0.3
    np.testing.assert_allclose(np.diag(affine)[:3], (0.8, 0.8, 1.5))


def test_volumes_round_trip_through_monai_with_their_affine(tmp_path):
    from monai.transforms import LoadImaged

    records = write_synthetic_volumes(tmp_path, n=2, shape=(24, 20, 16), seed=1)
    assert [r["id"] for r in records] == ["case_000", "case_001"]
    loaded = LoadImaged(keys=["image", "label"])(records[1])
    volume, label, affine = synthetic_volume(seed=100_003 + 1, shape=(24, 20, 16))
    assert tuple(loaded["image"].shape) == (24, 20, 16)
    np.testing.assert_allclose(loaded["image"].numpy(), volume)
    np.testing.assert_array_equal(loaded["label"].numpy(), label)
    np.testing.assert_allclose(loaded["image"].affine.numpy(), affine)
    assert not list(tmp_path.rglob(".*"))  # no temporary files left
