"""A user's own labelled folder: ``medseg data check --images --labels`` and the records a bundle trains on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.cli import main
from medseg.data import LabelledFolder, labelled_folder_records, mix_records, write_synthetic_folder
from medseg.data.labelled_folder import default_validation_size


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_synthetic_folder(tmp_path / "mine", 3, height=64, width=64, image_format="jpg")


def _files(root: Path) -> dict[Path, float]:
    return {path: path.stat().st_mtime_ns for path in root.rglob("*")}


def _check(folder: Path, *extra: str, masks: bool = True) -> list[str]:
    return ["data", "check", "--images", str(folder / "images"), "--labels", str(folder / "labels"),
            *(["--masks", str(folder / "masks")] if masks else []), *extra]


def _fails_naming(capsys, argv: list[str], root: Path, *named: str) -> None:
    before = _files(root)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in named:
        assert text in err, err
    assert _files(root) == before  # nothing written


def test_a_good_folder_is_checked_with_its_count_and_digest(folder, capsys):
    assert main(_check(folder)) == 0
    out = capsys.readouterr().out
    assert "3 labelled photographs, every file valid" in out
    assert LabelledFolder.of(folder / "images", folder / "labels", folder / "masks").digest() in out


def test_a_missing_label_is_named(folder, capsys):
    (folder / "labels" / "retina1.png").unlink()
    _fails_naming(capsys, _check(folder), folder, "retina1.jpg: image without label")


def test_a_label_without_its_image_is_named(folder, capsys):
    (folder / "images" / "retina2.jpg").unlink()
    _fails_naming(capsys, _check(folder), folder, "retina2.png: label without image")


def test_a_label_of_another_size_is_named(folder, capsys):
    Image.fromarray(np.zeros((60, 64), np.uint8)).save(folder / "labels" / "retina0.png")
    _fails_naming(capsys, _check(folder), folder, "retina0.png: size mismatch")


def test_a_label_that_is_neither_binary_nor_an_index_map_of_the_named_values_is_named(folder, capsys):
    grey = (np.arange(64 * 64) % 7 * 30).reshape(64, 64).astype(np.uint8)
    Image.fromarray(grey).save(folder / "labels" / "retina0.png")
    _fails_naming(capsys, _check(folder), folder, "retina0.png: not a binary label")
    index_map = np.where(np.asarray(Image.open(folder / "labels" / "retina1.png")) > 0, 2, 0).astype(np.uint8)
    Image.fromarray(index_map).save(folder / "labels" / "retina1.png")
    _fails_naming(capsys, _check(folder, "--label-positive", "3", "4"), folder,
                  "retina1.png: label holds none of the named vessel values [3, 4]")


def test_an_empty_folder_is_named(tmp_path, capsys):
    for name in ("images", "labels"):
        (tmp_path / name).mkdir()
    _fails_naming(capsys, _check(tmp_path, masks=False), tmp_path, f"{tmp_path / 'images'}: no images")


def test_fewer_than_two_pairs_are_refused(tmp_path, capsys):
    folder = write_synthetic_folder(tmp_path / "one", 1, height=64, width=64)
    _fails_naming(capsys, _check(folder), folder, "1 labelled photograph(s); at least 2 are needed")


def test_an_unreadable_file_is_named(folder, capsys):
    (folder / "images" / "retina1.jpg").write_bytes(b"not a photograph")
    _fails_naming(capsys, _check(folder), folder, "retina1.jpg: corrupt or unreadable image")


def test_a_mask_of_the_wrong_size_is_named(folder, capsys):
    Image.fromarray(np.full((64, 32), 255, np.uint8)).save(folder / "masks" / "retina2.png")
    _fails_naming(capsys, _check(folder), folder, "retina2.png: size mismatch, mask is 64x32")


def test_the_default_validation_keeps_a_photograph_on_each_side():
    assert [default_validation_size(n) for n in (2, 3, 5, 11, 20)] == [1, 1, 1, 2, 4]


def test_folder_records_split_by_seed_and_estimate_the_fov_where_no_masks_are_given(folder, tmp_path):
    train, val = labelled_folder_records(str(folder / "images"), str(folder / "labels"), n_val=1, seed=0,
                                         fov_dir=str(tmp_path / "fov"))
    assert (len(train), len(val)) == (2, 1)
    assert sorted(r["id"] for r in train + val) == ["retina0", "retina1", "retina2"]
    for record in train + val:
        estimated = np.asarray(Image.open(record["mask"])) > 0
        given = np.asarray(Image.open(folder / "masks" / f"{record['id']}.png")) > 0
        assert (estimated == given).mean() > 0.85  # the estimate of inference (grown a pixel), written by the run
    assert os.path.dirname(train[0]["mask"]) == str(tmp_path / "fov" / "train")


def test_index_map_labels_carry_their_vessel_values_to_the_transforms(folder):
    train, val = labelled_folder_records(str(folder / "images"), str(folder / "labels"), str(folder / "masks"),
                                         label_positive=[255])
    assert all(record["label_positive"] == [255] for record in train + val)


def test_mixing_adds_the_bundles_photographs_at_the_ratio_to_training_only():
    own = ([{"id": f"o{k}"} for k in range(4)], [{"id": "v"}])
    bundle = ([{"id": f"b{k}"} for k in range(16)], [{"id": "bv"}])
    train, val = mix_records(own, bundle, ratio=0.5)
    assert [r["id"] for r in train[:4]] == ["o0", "o1", "o2", "o3"] and len(train) == 6
    assert val == [{"id": "v"}]
    assert len(mix_records(own, bundle, ratio=10)[0]) == 4 + 16


def test_training_on_a_bad_folder_fails_before_anything_is_written(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (folder / "labels" / "retina1.png").unlink()
    train = ["train", "drive_vessel_unet", "--images", str(folder / "images"), "--labels", str(folder / "labels")]
    _fails_naming(capsys, train, tmp_path, "retina1.jpg: image without label")
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_validation_that_leaves_nothing_to_train_on_is_refused(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = ["train", "drive_vessel_unet", "--images", str(folder / "images"), "--labels", str(folder / "labels")]
    _fails_naming(capsys, [*train, "--val", "3"], tmp_path, "--val 3: the folder holds 3 pairs")
    _fails_naming(capsys, [*train, "--val", "1", "--val-images", str(folder / "images"), "--val-labels",
                           str(folder / "labels")], tmp_path, "not both")


# labels of classes (a road-scene bundle's): index maps of the classes and a value for unlabelled pixels


def write_road_scenes(root: Path, count: int, void_value: int = 255, height: int = 48, width: int = 64) -> Path:
    """``count`` RGB frames under ``root/images`` with index-map labels under ``root/labels``: three bands of
    classes 0 (sky), 1 (building) and 3 (road), a void stripe between them; each band tinted by its class."""
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for index in range(count):
        label = np.full((height, width), 3, np.uint8)
        label[: height // 3], label[height // 3: 2 * height // 3] = 0, 1
        label[height // 3 - 2: height // 3 + 2] = void_value
        colours = np.array([(128, 128, 128), (128, 0, 0), (0, 0, 0), (128, 64, 128)], np.uint8)
        image = colours[np.where(label == void_value, 2, label)] + rng.integers(0, 20, (height, width, 3), np.uint8)
        Image.fromarray(image).save(root / "images" / f"frame{index}.png")
        Image.fromarray(label).save(root / "labels" / f"frame{index}.png")
    return root


@pytest.fixture
def scenes(tmp_path) -> Path:
    return write_road_scenes(tmp_path / "scenes", 3)


def test_a_folder_of_class_labels_is_checked_with_the_share_of_each_value(scenes, capsys):
    assert main(_check(scenes, "--classes", "11", "--void-value", "255", masks=False)) == 0
    out = capsys.readouterr().out
    assert "3 labelled photographs, every file valid" in out
    shares = {int(line.split()[0]): float(line.split()[-1]) for line in out.splitlines()[-12:]}
    assert set(shares) == {*range(11), 255} and shares[2] == 0.0
    assert shares[255] == pytest.approx(100 * 4 / 48, abs=0.01) and sum(shares.values()) == pytest.approx(100, abs=0.1)


def test_a_class_label_value_that_is_neither_a_class_nor_void_is_named(scenes, capsys):
    label = np.asarray(Image.open(scenes / "labels" / "frame1.png")).copy()
    label[0, 0] = 20
    Image.fromarray(label).save(scenes / "labels" / "frame1.png")
    _fails_naming(capsys, _check(scenes, "--classes", "11", "--void-value", "255", masks=False), scenes,
                  "frame1.png: label values [20] outside 0..10 (11 classes) and void (255)")


def test_a_class_label_all_void_and_a_colour_label_are_named(scenes, capsys):
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(scenes / "labels" / "frame0.png")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(scenes / "labels" / "frame2.png")
    _fails_naming(capsys, _check(scenes, "--classes", "11", "--void-value", "255", masks=False), scenes,
                  "frame0.png: every pixel is void (255)", "frame2.png: expected a single-channel index label")


def test_class_labels_take_the_class_count_and_a_void_value_above_the_classes(scenes, capsys):
    _fails_naming(capsys, _check(scenes, "--void-value", "255", masks=False), scenes, "--classes N --void-value V")
    _fails_naming(capsys, _check(scenes, "--classes", "11", "--void-value", "3", masks=False), scenes,
                  "the void value 3 must lie above the classes 0..10")


def test_a_vessel_bundle_refuses_a_void_value_and_a_bundle_of_classes_needs_one(scenes, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = ["--images", str(scenes / "images"), "--labels", str(scenes / "labels")]
    _fails_naming(capsys, ["train", "drive_vessel_unet", *folder, "--void-value", "255"], tmp_path,
                  "drive_vessel_unet learns vessels from binary labels")
    _fails_naming(capsys, ["train", "camvid_unet", *folder], tmp_path,
                  "camvid_unet learns 11 classes from index-map labels (values 0..10): name the value of their "
                  "unlabelled pixels with --void-value V")
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_class_folder_records_carry_no_fov_mask(scenes, tmp_path):
    train, val = labelled_folder_records(str(scenes / "images"), str(scenes / "labels"), n_val=1)
    assert len(train) == 2 and len(val) == 1
    assert not any("mask" in record for record in train + val)


def test_a_folder_of_class_labels_is_checked_however_it_is_made(tmp_path):
    with pytest.raises(ValueError, match="must lie above the classes 0..10"):
        LabelledFolder(tmp_path, tmp_path, classes=11, void_value=3)
    with pytest.raises(ValueError, match="take no FOV masks"):
        LabelledFolder(tmp_path, tmp_path, masks=tmp_path, classes=11, void_value=255)
    with pytest.raises(ValueError, match="both the class count and the void value"):
        LabelledFolder(tmp_path, tmp_path, void_value=255)
