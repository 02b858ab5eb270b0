"""``medseg data check`` / ``medseg data preview`` on the real datasets and on damaged copies of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from medseg.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]


def medseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medseg", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_lists_the_data_commands(capsys):
    assert "data" in help_text(["--help"], capsys)
    check = help_text(["data", "check", "--help"], capsys)
    assert all(word in check for word in ("--dataset", "drive,les-av,camvid,synthetic", "--root", "every"))
    assert "--out" in help_text(["data", "preview", "--help"], capsys)


def test_check_real_drive_prints_the_table(drive_root):
    result = medseg("data", "check", "--dataset", "drive", "--root", str(drive_root))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "40 samples, every file valid" in lines[0]
    assert lines[1].split()[:3] == ["split", "images", "size"]
    assert lines[2].split()[:4] == ["training", "20", "584x565", "{0,255}"]
    assert lines[3].split()[:4] == ["test", "20", "584x565", "{0,255}"]


def test_check_real_camvid_prints_the_table(camvid_root, capsys):
    assert main(["data", "check", "--dataset", "camvid", "--root", str(camvid_root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "701 samples, every file valid" in lines[0]
    assert [line.split()[:4] for line in lines[2:5]] == [
        ["train", "367", "360x480", "0..11"],
        ["val", "101", "360x480", "0..11"],
        ["test", "233", "360x480", "0..11"],
    ]
    assert any(line.split()[:2] == ["3", "Road"] for line in lines)


def test_preview_writes_a_png_grid(drive_root, tmp_path):
    out = tmp_path / "preview.png"
    assert main(["data", "preview", "--dataset", "drive", "--root", str(drive_root), "--out", str(out), "-n", "2"]) == 0
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.width > grid.height
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.png"]


def linked_copy(source: Path, target: Path, keep: int) -> Path:
    """``target`` mirrors ``source`` with symlinks to the first ``keep`` files of each folder."""
    for folder in sorted(p for p in source.rglob("*") if p.is_dir()):
        (target / folder.relative_to(source)).mkdir(parents=True, exist_ok=True)
        for file in sorted(p for p in folder.iterdir() if p.is_file())[:keep]:
            (target / file.relative_to(source)).symlink_to(file)
    return target


def test_drive_copy_with_one_truncated_image_fails_naming_it(drive_root, tmp_path, capsys):
    root = linked_copy(drive_root, tmp_path / "DRIVE", keep=2)
    bad = root / "test" / "images" / "02_test.tif"
    data = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(data[: len(data) // 2])
    assert main(["data", "check", "--dataset", "drive", "--root", str(root)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(bad) in captured.err and "corrupt or unreadable image" in captured.err
    assert captured.err.count("\n") == 1  # one bad file: one line, naming it and its problem


def test_camvid_copy_with_one_corrupt_label_fails_naming_it(camvid_root, tmp_path, capsys):
    root = linked_copy(camvid_root, tmp_path / "CamVid", keep=2)
    bad = sorted((root / "valannot").iterdir())[1]
    bad.unlink()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert main(["data", "check", "--dataset", "camvid", "--root", str(root)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(bad) in captured.err and "corrupt or unreadable image" in captured.err


def test_check_real_les_av_reads_both_splits_and_its_index_map_labels(les_av_root):
    result = medseg("data", "check", "--dataset", "les-av", "--root", str(les_av_root))
    assert result.returncode == 0, result.stderr
    assert "LES-AV" in result.stdout and "22 samples, every file valid" in result.stdout
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {"training", "test"}
    assert "1444x1620" in rows["test"] and "{0,1,2,3,4}" in rows["training"]


def test_check_names_a_les_av_photograph_without_its_label(les_av_root, tmp_path):
    import shutil

    copy = Path(shutil.copytree(les_av_root, tmp_path / "les-av"))
    (copy / "test" / "vessel" / "3.png").unlink()
    result = medseg("data", "check", "--dataset", "les-av", "--root", str(copy))
    assert result.returncode == 1
    assert f"{copy / 'test' / 'images' / '3.png'}: image without label" in result.stderr


def test_check_without_root_reads_the_dataset_in_medseg_data_root(tmp_path, monkeypatch, capsys):
    from medseg.data.synthetic import write_synthetic_drive

    write_synthetic_drive(tmp_path / "DRIVE", n_training=1, n_test=1, seed=1)
    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(tmp_path))
    assert main(["data", "check", "--dataset", "drive"]) == 0
    assert "training" in capsys.readouterr().out
    monkeypatch.delenv("MEDSEG_DATA_ROOT")
    assert main(["data", "check", "--dataset", "drive"]) == 1
    assert "--root" in (error := capsys.readouterr().err) and "MEDSEG_DATA_ROOT" in error
