"""Bad dataset folders: each problem is reported naming the file, the CLI exits non-zero and writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.cli import main
from medseg.data import DatasetError, validate_camvid, validate_drive


def remove_folder(root: Path) -> tuple[Path, str]:
    shutil.rmtree(root / "training" / "mask")
    return root / "training" / "mask", "missing folder"


def empty_folder(root: Path) -> tuple[Path, str]:
    for image in (root / "training" / "images").iterdir():
        image.unlink()
    return root / "training" / "images", "empty folder"


def truncate_image(root: Path) -> tuple[Path, str]:
    image = root / "training" / "images" / "02_training.tif"
    image.write_bytes(image.read_bytes()[:5000])
    return image, "corrupt or unreadable image"


def garble_mask(root: Path) -> tuple[Path, str]:
    mask = root / "training" / "mask" / "03_training_mask.gif"
    mask.write_bytes(b"GIF89a" + bytes(200))
    return mask, "corrupt or unreadable image"


def shrink_label(root: Path) -> tuple[Path, str]:
    label = root / "training" / "1st_manual" / "02_manual1.gif"
    Image.open(label).crop((0, 0, 500, 584)).save(label, optimize=False)
    return label, "size mismatch"


def grey_label(root: Path) -> tuple[Path, str]:
    label = root / "training" / "1st_manual" / "03_manual1.gif"
    values = np.asarray(Image.open(label)).copy()
    values[:10, :10] = 128  # a third grey level: not a binary vessel label
    Image.fromarray(values).save(label, optimize=False)
    return label, "not a binary label"


def drop_label(root: Path) -> tuple[Path, str]:
    (root / "training" / "1st_manual" / "02_manual1.gif").unlink()
    return root / "training" / "images" / "02_training.tif", "image without label"


DRIVE_DAMAGE = [remove_folder, empty_folder, truncate_image, garble_mask, shrink_label, grey_label, drop_label]


@pytest.mark.parametrize("damage", DRIVE_DAMAGE, ids=lambda f: f.__name__)
def test_drive_problem_is_named_with_its_file(synthetic_drive, damage):
    path, problem = damage(synthetic_drive)
    with pytest.raises(DatasetError, match=problem) as error:
        validate_drive(synthetic_drive)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("damage", DRIVE_DAMAGE, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dataset", ["drive", "synthetic"])
def test_cli_exits_non_zero_naming_the_file_and_writes_nothing(synthetic_drive, tmp_path, capsys, damage, dataset):
    path, problem = damage(synthetic_drive)
    out = tmp_path / "previews" / "grid.png"
    for command in (["check"], ["preview", "--out", str(out)]):
        assert main(["data", *command, "--dataset", dataset, "--root", str(synthetic_drive)]) == 1
        errors = capsys.readouterr().err
        assert str(path) in errors and problem in errors
    assert not out.parent.exists()


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DatasetError, match="missing folder") as error:
        validate_drive(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)
    assert main(["data", "check", "--dataset", "camvid", "--root", str(tmp_path / "nowhere")]) == 1


def test_every_bad_file_is_reported_not_just_the_first(synthetic_drive):
    truncated, _ = truncate_image(synthetic_drive)
    grey, _ = grey_label(synthetic_drive)
    with pytest.raises(DatasetError, match="2 invalid file") as error:
        validate_drive(synthetic_drive)
    assert str(truncated) in str(error.value) and str(grey) in str(error.value)


def test_camvid_label_value_outside_0_to_11_is_named(tiny_camvid, capsys):
    validate_camvid(tiny_camvid)  # the undamaged folder is valid
    label = tiny_camvid / "valannot" / "0001TP_000001.png"
    values = np.asarray(Image.open(label)).copy()
    values[0, 0] = 12
    Image.fromarray(values).save(label)
    with pytest.raises(DatasetError, match=r"label values \[12\] outside 0..10 \(11 classes\) and void \(11\)") as error:
        validate_camvid(tiny_camvid)
    assert str(label) in str(error.value)
    assert main(["data", "check", "--dataset", "camvid", "--root", str(tiny_camvid)]) == 1
    assert str(label) in capsys.readouterr().err


def test_camvid_image_without_label_is_named(tiny_camvid):
    (tiny_camvid / "testannot" / "0001TP_000000.png").unlink()
    with pytest.raises(DatasetError, match="image without label") as error:
        validate_camvid(tiny_camvid)
    assert str(tiny_camvid / "test" / "0001TP_000000.png") in str(error.value)


def test_camvid_rgb_label_is_rejected(tiny_camvid):
    label = tiny_camvid / "trainannot" / "0001TP_000000.png"
    Image.open(label).convert("RGB").save(label)
    with pytest.raises(DatasetError, match="single-channel") as error:
        validate_camvid(tiny_camvid)
    assert str(label) in str(error.value)
