"""The shared helpers: files and folders appear whole or not at all, and one table format."""

import os
import stat

import pytest

from medseg.utils import atomic_folder, atomic_path, atomic_write_text, format_table, full_suffix


def test_an_atomic_write_replaces_the_file_only_when_it_completes(tmp_path):
    target = tmp_path / "out" / "report.json"
    atomic_write_text(target, "first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("the writer fails")
    assert target.read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temporary file left behind


def test_the_temporary_file_keeps_the_suffix_writers_choose_their_format_by(tmp_path):
    with atomic_path(tmp_path / "scan_mask.nii.gz") as temporary:
        assert temporary.name.endswith(".nii.gz") and temporary.parent == tmp_path
        temporary.write_bytes(b"x")
    assert (tmp_path / "scan_mask.nii.gz").read_bytes() == b"x"
    assert full_suffix(tmp_path / "A.PNG") == ".png"


def test_an_atomic_folder_appears_complete_or_not_at_all(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(target) as staging:
            (staging / "configs").mkdir()
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(target) as staging:
        (staging / "metadata.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["metadata.json"]
    with pytest.raises(FileExistsError, match="not an empty folder"):
        with atomic_folder(target):
            pass


def test_tables_pad_columns_and_write_floats_with_four_decimals():
    assert format_table(["metric", "test"], [["f1", 0.83051], ["images", 20]]).splitlines() == [
        "metric  test",
        "------  ------",
        "f1      0.8305",
        "images  20",
    ]


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_atomic_files_and_folders_get_the_modes_a_plain_write_gets_under_the_umask(tmp_path, umask_022):
    plain_file, plain_folder = tmp_path / "plain.txt", tmp_path / "plain"
    plain_file.write_text("x")
    plain_folder.mkdir()
    written = atomic_write_text(tmp_path / "prediction.png", "x")
    with atomic_folder(tmp_path / "bundle") as staging:
        (staging / "metadata.json").write_text("{}")
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain_file.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == stat.S_IMODE(plain_folder.stat().st_mode) == 0o755
