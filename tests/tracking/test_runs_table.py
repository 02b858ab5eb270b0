"""Tracking store defaults, the fail-fast server check and the ``medseg runs`` table."""

import socket
import time

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from medseg.cli import main
from medseg.tracking import TrackingServerError, check_tracking_server, default_tracking_uri, run_tags, runs_table


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A SQLite store with two runs in two experiments (created once: MLflow's schema migration is slow)."""
    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    for experiment, network, f1, test_f1 in (("drive", "unet", 0.81, 0.83), ("camvid", "u2net", None, None)):
        experiment_id = client.create_experiment(experiment, artifact_location=str(tmp_path / "mlruns"))
        run = client.create_run(experiment_id, run_name=f"{network}_run")
        metrics = [Metric("train_loss", 0.25, 0, 1)] + ([Metric("val_f1", f1, 0, 1)] if f1 else [])
        metrics += [Metric("test_f1", test_f1, 0, 1)] if test_f1 else []
        client.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=[Param("max_epochs", "200")],
            tags=[RunTag(k, v) for k, v in run_tags(network, experiment).items()],
        )
        client.set_terminated(run.info.run_id)
    return uri


def test_default_store_is_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


def test_run_tags_name_network_dataset_commit_and_version():
    tags = run_tags("unet", "drive", seed="0")
    assert tags["network"] == "unet" and tags["dataset"] == "drive" and tags["seed"] == "0"
    assert tags["medseg_version"] and len(tags["git_commit"]) in (40, len("unknown"))
    assert tags["mlflow.source.name"] == "medseg" and tags["mlflow.source.type"] == "LOCAL"


def test_table_lists_runs_with_tags_params_and_metrics(store):
    table = runs_table(store)
    header, rule, *rows = table.splitlines()
    assert header.split() == [
        "run_id", "experiment", "run_name", "status", "start", "duration", "network", "dataset", "max_epochs",
        "train_loss", "val_f1", "test_f1",
    ]
    assert set(rule) == {"-", " "}
    assert len(rows) == 2
    drive_row = next(row for row in rows if "unet_run" in row and "u2net" not in row)
    assert "FINISHED" in drive_row and "0.8100" in drive_row and "0.2500" in drive_row and "200" in drive_row


def test_table_filters_by_experiment(store):
    _, _, *rows = runs_table(store, experiment_name="camvid").splitlines()
    assert len(rows) == 1 and "u2net_run" in rows[0]
    assert "val_f1" not in runs_table(store, experiment_name="camvid")  # no camvid run has it


def test_runs_command_filters_with_mlflow_search_syntax(store, capsys):
    assert main(["runs", "--tracking-uri", store, "--filter", "metrics.val_f1 > 0.8"]) == 0
    _, _, *rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 1 and "unet_run" in rows[0] and "0.8300" in rows[0]  # test beside validation
    assert main(["runs", "--tracking-uri", store, "--filter", "metrics.val_f1 >"]) == 1
    assert capsys.readouterr().err.startswith("medseg runs: error: ")


def test_unknown_experiment_and_missing_store_are_clear_errors(store, tmp_path):
    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'.*known: Default, camvid, drive"):
        runs_table(store, experiment_name="nope")
    with pytest.raises(FileNotFoundError, match="no MLflow database at"):
        runs_table(f"sqlite:///{tmp_path}/absent.db")
    assert not (tmp_path / "absent.db").exists()


def test_runs_command_prints_the_table(store, capsys):
    assert main(["runs", "--tracking-uri", store, "--experiment", "drive"]) == 0
    assert "unet_run" in capsys.readouterr().out


def test_runs_command_reports_an_unreachable_server_in_one_line(capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    assert main(["runs", "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medseg runs: error: MLflow tracking server") and "unreachable" in err


def test_unreachable_server_fails_fast_with_a_clear_message():
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingServerError, match=f"MLflow tracking server {uri} is unreachable"):
        check_tracking_server(uri, timeout=2)
    assert time.monotonic() - started < 5


def test_non_http_stores_need_no_server(tmp_path):
    check_tracking_server(f"sqlite:///{tmp_path}/mlflow.db")
