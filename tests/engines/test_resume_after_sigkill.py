"""A training killed with SIGKILL at any moment resumes with ``--resume`` and keeps its promises: the epochs, the
time budget and the learning-rate schedule continue where the last checkpoint left them, in the same MLflow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from monai.utils import path_to_sqlite_uri

from medseg.data.synthetic import ensure_synthetic_drive
from medseg.engines.budget import ELAPSED_KEY

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "drive_vessel_unet"
# one small network; 3 training images of 8 patches each, 3 iterations per epoch
SMALL = ["--set", "network_features=[4,8,16]", "--set", "patch_size=[48,48]", "--set", "roi_size=[64,64]",
         "--set", "val_images=1", "--set", "batch_images=1", "--set", "patches_per_image=8",
         "--set", "ensemble_members=1", "--set", "val_interval=1"]
ITERATIONS_PER_EPOCH = 3


@pytest.fixture(scope="module")
def synthetic_drive(tmp_path_factory) -> Path:
    return ensure_synthetic_drive(tmp_path_factory.mktemp("data") / "drive", n_training=4, n_test=2, seed=1)


def train_command(data: Path, out: Path, uri: str, *settings: str) -> list[str]:
    return [sys.executable, "-m", "medseg", "train", str(BUNDLE), "--data-root", str(data), *SMALL, *settings,
            "--output-dir", str(out), "--tracking-uri", uri]


def kill_after_checkpoint(command: list[str], checkpoints: Path, epoch: int, then_wait: float) -> None:
    """Start ``command``, SIGKILL it ``then_wait`` seconds after its epoch-``epoch`` checkpoint appears."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 600
    while not any(int(p.stem.split("=")[1]) >= epoch for p in checkpoints.glob("latest_checkpoint_epoch=*.pt")):
        assert process.poll() is None, "the training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(then_wait)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (checkpoints / "model.pt").exists(), "killed too late: the training had finished"


def trainer_state(checkpoints: Path) -> dict:
    newest = max(checkpoints.glob("latest_checkpoint_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[1]))
    return torch.load(newest, weights_only=False)["trainer"]


def one_run(uri: str):
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("drive_vessel_unet").experiment_id])
    assert run.info.status == "FINISHED"
    return client, run


def test_an_epoch_based_run_killed_mid_epoch_resumes_to_its_last_epoch_in_the_same_run(synthetic_drive, tmp_path):
    out, uri = tmp_path / "run", path_to_sqlite_uri(tmp_path / "mlflow.db")
    command = train_command(synthetic_drive, out, uri, "--set", "max_epochs=6")
    kill_after_checkpoint(command, out / "checkpoints", epoch=2, then_wait=0.5)

    done = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    state = trainer_state(out / "checkpoints")
    assert state["iteration"] == 6 * ITERATIONS_PER_EPOCH == 6 * state["epoch_length"]
    client, run = one_run(uri)
    loss_steps = {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")}
    assert loss_steps == set(range(1, 6 * ITERATIONS_PER_EPOCH + 1))
    assert {m.step for m in client.get_metric_history(run.info.run_id, "val_f1")} == set(range(1, 7))


def test_a_budgeted_run_killed_mid_epoch_spends_only_what_was_left_with_the_learning_rate_continuing(
    synthetic_drive, tmp_path
):
    out, uri = tmp_path / "run", path_to_sqlite_uri(tmp_path / "mlflow.db")
    budget_seconds = 40.0
    command = train_command(synthetic_drive, out, uri, "--set", "max_epochs=100000",
                            "--set", f"time_budget_minutes={budget_seconds / 60}")
    kill_after_checkpoint(command, out / "checkpoints", epoch=3, then_wait=0.5)
    spent_before = trainer_state(out / "checkpoints")[ELAPSED_KEY]
    assert 0 < spent_before < budget_seconds

    start = time.monotonic()
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    resumed_seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"time budget of {budget_seconds / 60:g} minutes spent" in done.stdout + done.stderr
    state = trainer_state(out / "checkpoints")  # the last interval checkpoint before the budget ran out
    epochs = state["iteration"] // state["epoch_length"]
    epoch_seconds = state[ELAPSED_KEY] / epochs * 3  # generous: an epoch and its validation, three times over
    # validation counts: the last epoch's may end past the budget
    assert spent_before < state[ELAPSED_KEY] < budget_seconds + epoch_seconds
    # a clock started again would have trained the whole budget after resuming
    assert resumed_seconds < budget_seconds - spent_before + epoch_seconds + 30  # + start-up and evaluation

    client, run = one_run(uri)
    assert "system/cpu_utilization_percentage" in run.data.metrics  # MLflow's system metrics, over a minute
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr_group_0")}
    rates = [history[step] for step in sorted(history)]
    assert rates[0] > rates[-1] >= 0
    # cosine decay without a jump back up at the restart (a restarted schedule would start at rates[0] again); the
    # steps retrained after the kill may sit a validation's time higher on the curve
    assert max(later - earlier for earlier, later in zip(rates, rates[1:])) < 0.05 * rates[0]
