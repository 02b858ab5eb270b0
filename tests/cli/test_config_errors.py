"""An error inside a bundle config reaches the user as one line naming the config id and the cause."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", [
    ["evaluate", "bundles/drive_vessel_unet", "--split", "test"],
    ["train", "bundles/drive_vessel_unet", "--set", "ensemble_members=1"],
])
def test_a_dataset_folder_that_does_not_exist_is_one_line_naming_the_id_and_the_path(command, tmp_path, capsys,
                                                                                    monkeypatch):
    monkeypatch.chdir(REPO)
    missing = tmp_path / "no_such_dataset"
    code = main([*command, "--set", f"dataset_dir={missing}", "--output-dir", str(tmp_path / "out"),
                 *(["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"] if command[0] == "train" else [])])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medseg ")]
    assert code == 1
    assert len(errors) == 1 and "Traceback" not in errors[0]
    assert "config id 'records'" in errors[0] and str(missing) in errors[0] and "DatasetError" in errors[0]
