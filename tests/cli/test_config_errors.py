"""An error inside a bundle config reaches the user as one line naming the config id and the cause."""

from __future__ import annotations

import shutil
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


@pytest.mark.parametrize("command, typo, nearest", [
    (["train", "drive_vessel_unet"], "max_epoch=2", "max_epochs"),
    (["train", "camvid_unet", "--config", "cpu_budget"], "time_budget_minute=1", "time_budget_minutes"),
    (["evaluate", "drive_vessel_unet"], "sw_overlab#x=0.25", "sw_overlap"),
    (["bundle", "ship", "BUNDLE_COPY", "BUNDLE_COPY/models/model.pt"], "ensemble_member=1", "ensemble_members"),
])
def test_a_set_of_an_unknown_id_is_an_error_naming_the_nearest_ids_before_anything_runs(command, typo, nearest,
                                                                                       tmp_path, capsys):
    copy = shutil.copytree(REPO / "bundles" / "drive_vessel_unet", tmp_path / "drive_vessel_unet")
    command = [argument.replace("BUNDLE_COPY", str(copy)) for argument in command]
    code = main([*command, "--set", typo, "--output-dir", str(tmp_path / "out")])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(errors) == 1 and typo.partition("=")[0] in errors[0] and nearest in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_set_of_a_nested_id_or_of_an_id_another_config_of_the_bundle_reads_is_accepted():
    from medseg.engines.workflow import check_override_ids

    # dice_weight is train.yaml's alone: the bench gives an evaluation the sets its training had
    check_override_ids(REPO / "bundles" / "drive_vessel_unet", {"network_def#features": [4, 8], "dice_weight": 1.0})


def test_the_training_fov_width_is_an_id_of_a_fundus_bundles_training_on_a_folder_alone(tmp_path, capsys):
    from medseg.engines.finetune import folder_training_ids

    # a fundus bundle's training on a folder brings its photographs to it (tests/test_own_photographs.py sets it)
    assert folder_training_ids(REPO / "bundles" / "drive_vessel_unet") == {"training_fov_width"}
    assert folder_training_ids(REPO / "bundles" / "camvid_unet") == set()
    # on the bundle's own dataset nothing reads it: refused, not silently ignored
    code = main(["train", "drive_vessel_unet", "--set", "training_fov_width=810",
                 "--output-dir", str(tmp_path / "out")])
    assert code == 1 and "'training_fov_width' is not an id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_dataset_names_data_root_and_medseg_data_root_and_leaves_no_executed_config(tmp_path, capsys,
                                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(tmp_path / "no_data"))
    code = main(["evaluate", "drive_vessel_unet", "--output-dir", str(tmp_path / "out")])
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medseg ")]
    assert code == 1 and "Traceback" not in error
    assert str(tmp_path / "no_data" / "DRIVE") in error and "--data-root" in error and "MEDSEG_DATA_ROOT" in error
    assert not list((tmp_path / "out").glob("config_*.json"))
