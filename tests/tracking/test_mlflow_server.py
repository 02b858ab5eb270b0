"""A real ``mlflow server``: a tiny MONAI training logs params, tags, metric histories and artifacts to it,
and training survives the server dying mid-run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from mlflow import MlflowClient
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler, from_engine
from monai.losses import DiceCELoss
from monai.transforms import Activationsd

from medseg.engines import AtomicCheckpointSaver, RunArtifacts
from medseg.tracking.handler import TrackingHandler
from medseg.metrics import FOVVesselMetricHandler
from medseg.tracking import run_tags

EXPERIMENT = "tiny_vessels"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on a free port with a SQLite store, in its own process group."""

    def __init__(self, folder: Path) -> None:
        self.database = folder / "server.db"
        self.uri = f"http://127.0.0.1:{free_port()}"
        self.log = folder / "server.log"
        command = [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", f"sqlite:///{self.database}",
            "--artifacts-destination", str(folder / "artifacts"),
            "--host", "127.0.0.1", "--port", self.uri.rsplit(":", 1)[1], "--workers", "1",
        ]  # fmt: skip
        # no background job runner: it is not used here and costs start-up time
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._wait_until_healthy(timeout=90)

    def _wait_until_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        self.stop()
        pytest.fail(f"mlflow server not healthy after {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def server(tmp_path, monkeypatch):
    # fail a request at once once the server is gone, instead of MLflow's minutes of retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    running = MlflowServer(tmp_path)
    yield running
    running.stop()


def tiny_training(
    folder: Path, tracking_uri: str, run_name: str, max_epochs: int, make_samples: Callable[[int, int], list[dict]]
) -> SupervisedTrainer:
    """A MONAI trainer + evaluator wired as in a bundle: metrics, best checkpoint, artifacts, MLflow."""
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 1, 3, padding=1)
    folder.mkdir()
    config = folder / "config.json"
    config.write_text(json.dumps({"network": "conv", "max_epochs": max_epochs}))
    metric = FOVVesselMetricHandler(prefix="val_")
    tracking = {"tracking_uri": tracking_uri, "experiment_name": EXPERIMENT, "run_name": run_name}
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(make_samples(2, 1), batch_size=2),
        network=network,
        postprocessing=Activationsd(keys="pred", sigmoid=True),
        key_val_metric={"val_f1": metric},
        val_handlers=[
            AtomicCheckpointSaver(
                save_dir=str(folder / "checkpoints"), save_dict={"model": network}, save_key_metric=True,
                key_metric_filename="best.pt",
            ),
            TrackingHandler(**tracking, iteration_log=False, state_attributes=["best_metric", "best_metric_epoch"]),
        ],
    )  # fmt: skip
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(make_samples(4, 0), batch_size=2),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=0.05),
        loss_function=DiceCELoss(sigmoid=True),
        train_handlers=[
            ValidationHandler(validator=evaluator, interval=1),
            RunArtifacts(folder / "artifacts", evaluator=evaluator, vessel_metric=metric, num_images=2),
            TrackingHandler(
                **tracking,
                tag_name="train_loss",
                output_transform=from_engine(["loss"], first=True),
                experiment_param={"learning_rate": 0.05, "batch_size": 2},
                tags=run_tags("conv", "synthetic"),
                artifacts=[folder / "artifacts", folder / "checkpoints" / "best.pt", config],
                close_on_complete=True,
            ),
        ],
    )


def find_run(client: MlflowClient, run_name: str):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    return run


def test_training_logs_to_a_real_server_and_survives_its_death(server, tmp_path, vessel_samples):
    complete = tmp_path / "complete"
    tiny_training(complete, server.uri, "complete", max_epochs=2, make_samples=vessel_samples).run()

    client = MlflowClient(server.uri)
    run = find_run(client, "complete")
    assert run.info.status == "FINISHED"
    assert {"max_epochs": "2", "epoch_length": "2", "learning_rate": "0.05", "batch_size": "2"}.items() <= (
        run.data.params.items()
    )
    assert run.data.tags["network"] == "conv" and run.data.tags["dataset"] == "synthetic"
    assert {"git_commit", "medseg_version"} <= run.data.tags.keys()
    run_id = run.info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run_id, "val_f1")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "val_auc_roc")] == [1, 2]
    assert client.get_metric_history(run_id, "best_metric")
    artifacts = {artifact.path for artifact in client.list_artifacts(run_id)}
    assert artifacts == {
        "best.pt", "config.json", "metrics.json", "overlay_img0.png", "overlay_img1.png", "roc_pr.png",
        "training_curves.png",
    }  # fmt: skip
    downloaded = client.download_artifacts(run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(downloaded).read_text())["key_metric"] == "val_f1"

    # the server dies after the first epoch of a second run: training goes on, tracking loss is a warning
    interrupted = tmp_path / "interrupted"
    trainer = tiny_training(interrupted, server.uri, "interrupted", max_epochs=3, make_samples=vessel_samples)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda _: server.stop())
    with pytest.warns(RuntimeWarning, match="MLflow tracking lost .* Training goes on without tracking"):
        trainer.run()
    assert trainer.state.epoch == 3
    assert (interrupted / "checkpoints" / "best.pt").is_file()
    assert (interrupted / "artifacts" / "training_curves.png").is_file()
    # what reached the server before it died is in its store
    store = MlflowClient(f"sqlite:///{server.database}")
    run_id = find_run(store, "interrupted").info.run_id
    assert [m.step for m in store.get_metric_history(run_id, "val_f1")] == [1]
    assert [m.step for m in store.get_metric_history(run_id, "train_loss")] == [1, 2]
