"""Evaluations and shipped releases sit nested under the training run their checkpoints came from, and take their
training record from it."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from monai.utils import path_to_sqlite_uri

from medseg.tracking import (
    COMMAND_TAG,
    MACHINE_TAG,
    SEGMENT_START_METRIC,
    cpu_instructions,
    evaluation_tags,
    machine_description,
    record_run_id,
    run_tags,
    training_record,
)


def checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(path.name.encode())
    return path


def training_run(uri: str, folder: Path, name: str) -> str:
    """A training run named ``name`` whose output folder ``folder`` records its id, as its handler does."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bundle") or client.get_experiment(client.create_experiment("bundle"))
    folder.mkdir(parents=True, exist_ok=True)
    run_id = client.create_run(experiment.experiment_id, run_name=name).info.run_id
    record_run_id(folder, run_id)
    return run_id


def test_one_trainings_checkpoint_nests_under_its_run(tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    run_id = training_run(uri, tmp_path / "single", "run_single")
    tags = evaluation_tags([checkpoint(tmp_path / "single" / "checkpoints" / "model.pt")], uri)
    assert tags["mlflow.parentRunId"] == tags["medseg.source_run"] == run_id


def test_runs_of_one_name_are_told_apart_by_the_id_their_folder_records(tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    first = training_run(uri, tmp_path / "first", "run_same_name")
    second = training_run(uri, tmp_path / "second", "run_same_name")  # MLflow run names need not be unique
    for folder, run_id in (("first", first), ("second", second)):
        tags = evaluation_tags([checkpoint(tmp_path / folder / "checkpoints" / "model.pt")], uri)
        assert tags["medseg.source_run"] == run_id


def test_a_recorded_run_of_another_store_is_no_source(tmp_path):
    training_run(path_to_sqlite_uri(tmp_path / "other.db"), tmp_path / "single", "run_single")
    tags = evaluation_tags([checkpoint(tmp_path / "single" / "checkpoints" / "model.pt")],
                           path_to_sqlite_uri(tmp_path / "mlflow.db"))
    assert "medseg.source_run" not in tags


def test_the_members_of_one_ensemble_nest_under_the_ensembles_run(tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    run_id = training_run(uri, tmp_path / "ensemble", "run_ensemble")
    members = [checkpoint(tmp_path / "ensemble" / f"member{k}" / "checkpoints" / "model.pt") for k in range(2)]
    tags = evaluation_tags(members, uri)
    assert tags["mlflow.parentRunId"] == run_id
    assert len(tags["medseg.weights_sha256"].split(",")) == 2


def test_checkpoints_of_unrelated_trainings_nest_under_none(tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    training_run(uri, tmp_path / "a", "run_a")
    training_run(uri, tmp_path / "b", "run_b")
    tags = evaluation_tags([checkpoint(tmp_path / "a" / "checkpoints" / "model.pt"),
                            checkpoint(tmp_path / "b" / "checkpoints" / "model.pt")], uri)
    assert "mlflow.parentRunId" not in tags


def test_a_training_run_is_tagged_with_its_machine_and_command():
    tags = run_tags("UNet", "drive")
    assert tags[MACHINE_TAG] == machine_description() and tags[MACHINE_TAG]
    assert tags[COMMAND_TAG].split()[0] in ("medseg", "python")


def test_the_machine_names_the_widest_matrix_instructions_of_its_cpu():
    """Two hosts of one model name differ by AVX512-BF16 or AVX2 alone: a figure names which one it ran on."""
    from medseg.tracking.record import CPU_INSTRUCTIONS

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines() if line.startswith("flags")),
                 set())
    offered = [name for flag, name in CPU_INSTRUCTIONS if flag in flags]
    if not offered:
        pytest.skip("this CPU offers none of AMX, AVX512 or AVX2 (or has no /proc/cpuinfo)")
    assert f"({offered[0]}), " in machine_description()
    assert cpu_instructions() == offered[0]  # what results files of speed are named by (bench/inference_windows.py)


def test_the_command_tag_names_the_module_python_m_ran(tmp_path):
    package = tmp_path / "trainer"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("from medseg.tracking import run_tags, COMMAND_TAG\n"
                                         "print(run_tags('UNet', 'drive')[COMMAND_TAG])\n")
    (tmp_path / "script.py").write_text("import runpy\nrunpy.run_module('trainer', run_name='__main__')\n")
    run = lambda *argv: subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True,  # noqa: E731
                                       check=True).stdout.strip()
    assert run("-m", "trainer", "run", "--x", "a b") == "python -m trainer run --x 'a b'"
    assert run("script.py", "go") == "python script.py go"


def test_the_training_record_of_shipped_weights_comes_from_the_ensembles_run_and_its_members(tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("bundle")
    start = 1_796_000_000_000  # 2026-11-29, in milliseconds
    tags = {MACHINE_TAG: "AMD EPYC, 2 cores", COMMAND_TAG: "medseg train bundles/x"}
    parent = client.create_run(experiment, start_time=start, run_name="run_ensemble", tags=tags).info.run_id
    record_run_id(tmp_path / "ensemble", parent)
    client.set_terminated(parent, end_time=start + 55 * 60_000 + 12_000)
    # member 1 started a second later, so its run name sorts first by time; the record follows the member folders
    for member, last_step, second in ((1, 130, "01"), (0, 120, "00")):
        run = client.create_run(experiment, run_name=f"run_20261129_0000{second}_member{member}",
                                tags={"mlflow.parentRunId": parent}).info.run_id
        for step in (1, last_step // 2, last_step):
            client.log_metric(run, "train_loss", 1.0 / step, step=step)
    members = [checkpoint(tmp_path / "ensemble" / f"member{k}" / "checkpoints" / "model.pt") for k in range(2)]
    assert training_record(members, uri) == {
        "date": datetime.date.fromtimestamp(start / 1000).isoformat(), "machine": "AMD EPYC, 2 cores",
        "command": "medseg train bundles/x", "wall_minutes": 55.2, "steps": [120, 130],
    }


def test_weights_of_no_recorded_training_have_no_training_record(tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    assert training_record([checkpoint(tmp_path / "elsewhere" / "model.pt")], uri) is None


def store_of_a_training(tmp_path: Path, folder: str) -> tuple[str, MlflowClient, str]:
    """A tracking store with the experiment "bundle", and the training folder ``folder``."""
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    (tmp_path / folder).mkdir()
    return uri, client, client.create_experiment("bundle")


def test_the_training_records_wall_minutes_leave_out_the_time_between_a_kill_and_its_resume(tmp_path):
    uri, client, experiment = store_of_a_training(tmp_path, "single")
    minute, start = 60_000, 1_796_000_000_000
    run = client.create_run(experiment, start_time=start, run_name="run_single").info.run_id
    record_run_id(tmp_path / "single", run)
    # 10 minutes of training, killed; resumed an hour later from step 4 (steps 5 and 6 trained again) for 11 more
    client.log_metric(run, SEGMENT_START_METRIC, 0, timestamp=start, step=0)
    for step, at in ((1, 1), (4, 5), (6, 10)):
        client.log_metric(run, "train_loss", 1.0 / step, timestamp=start + at * minute, step=step)
    client.log_metric(run, SEGMENT_START_METRIC, 4, timestamp=start + 70 * minute, step=4)
    for step, at in ((5, 71), (12, 80)):
        client.log_metric(run, "train_loss", 1.0 / step, timestamp=start + at * minute, step=step)
    client.set_terminated(run, end_time=start + 81 * minute)
    record = training_record([checkpoint(tmp_path / "single" / "checkpoints" / "model.pt")], uri)
    assert record["wall_minutes"] == 81 - 60
    assert record["steps"] == [12]


def test_an_ensembles_wall_minutes_leave_out_the_downtime_its_members_shared_once(tmp_path):
    uri, client, experiment = store_of_a_training(tmp_path, "ensemble")
    minute, start = 60_000, 1_796_000_000_000
    parent = client.create_run(experiment, start_time=start, run_name="run_ensemble").info.run_id
    record_run_id(tmp_path / "ensemble", parent)
    for member in (0, 1):  # both killed together at minute 10, both resumed at minute 40, done at minute 50
        run = client.create_run(experiment, run_name=f"run_member{member}",
                                tags={"mlflow.parentRunId": parent}).info.run_id
        client.log_metric(run, SEGMENT_START_METRIC, 0, timestamp=start, step=0)
        client.log_metric(run, "train_loss", 1.0, timestamp=start + (10 - member) * minute, step=5)
        client.log_metric(run, SEGMENT_START_METRIC, 4, timestamp=start + 40 * minute, step=4)
        client.log_metric(run, "train_loss", 0.5, timestamp=start + 50 * minute, step=9)
    client.set_terminated(parent, end_time=start + 52 * minute)
    members = [checkpoint(tmp_path / "ensemble" / f"member{k}" / "checkpoints" / "model.pt") for k in range(2)]
    assert training_record(members, uri)["wall_minutes"] == 52 - 30  # minutes 10 to 40: no member ran
