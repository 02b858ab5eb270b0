"""Evaluations and shipped releases sit nested under the training run their checkpoints came from."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from monai.utils import path_to_sqlite_uri

from medseg.tracking import evaluation_tags


def checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(path.name.encode())
    return path


def training_run(uri: str, folder: Path, name: str) -> str:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bundle") or client.get_experiment(client.create_experiment("bundle"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mlflow_run_name.txt").write_text(name + "\n")
    return client.create_run(experiment.experiment_id, run_name=name).info.run_id


def test_one_trainings_checkpoint_nests_under_its_run(tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    run_id = training_run(uri, tmp_path / "single", "run_single")
    tags = evaluation_tags([checkpoint(tmp_path / "single" / "checkpoints" / "model.pt")], uri, "bundle")
    assert tags["mlflow.parentRunId"] == tags["medseg.source_run"] == run_id


def test_the_members_of_one_ensemble_nest_under_the_ensembles_run(tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    run_id = training_run(uri, tmp_path / "ensemble", "run_ensemble")
    members = [checkpoint(tmp_path / "ensemble" / f"member{k}" / "checkpoints" / "model.pt") for k in range(2)]
    tags = evaluation_tags(members, uri, "bundle")
    assert tags["mlflow.parentRunId"] == run_id
    assert len(tags["medseg.weights_sha256"].split(",")) == 2


def test_checkpoints_of_unrelated_trainings_nest_under_none(tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    training_run(uri, tmp_path / "a", "run_a")
    training_run(uri, tmp_path / "b", "run_b")
    tags = evaluation_tags([checkpoint(tmp_path / "a" / "checkpoints" / "model.pt"),
                            checkpoint(tmp_path / "b" / "checkpoints" / "model.pt")], uri, "bundle")
    assert "mlflow.parentRunId" not in tags
