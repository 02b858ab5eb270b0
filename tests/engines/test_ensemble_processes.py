"""An ensemble's member trainings live and die with the ``medseg train`` that started them, and one output folder
has one trainer at a time: a parent killed with SIGKILL leaves no member training on, and ``--resume`` then
finishes within the original budget; a second trainer on a folder in use is refused in one line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from monai.utils import path_to_sqlite_uri

from medseg.data.synthetic import ensure_synthetic_drive
from medseg.engines.budget import ELAPSED_KEY

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "drive_vessel_unet"
SMALL = ["--set", "network_features=[4,8,16]", "--set", "patch_size=[48,48]", "--set", "roi_size=[64,64]",
         "--set", "val_images=1", "--set", "batch_images=1", "--set", "patches_per_image=8", "--set", "val_interval=1",
         "--quiet"]
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def synthetic_drive(tmp_path_factory) -> Path:
    return ensure_synthetic_drive(tmp_path_factory.mktemp("data") / "drive", n_training=4, n_test=2, seed=3)


def train_command(data: Path, out: Path, *settings: str) -> list[str]:
    return [sys.executable, "-m", "medseg", "train", str(BUNDLE), "--data-root", str(data), *SMALL, *settings,
            "--output-dir", str(out), "--tracking-uri", path_to_sqlite_uri(out.parent / "mlflow.db")]


def wait_for_checkpoints(process: subprocess.Popen, folders: list[Path], epoch: int) -> None:
    deadline = time.monotonic() + 600
    for folder in folders:
        while not any(int(p.stem.split("=")[1]) >= epoch for p in folder.glob("latest_checkpoint_epoch=*.pt")):
            assert process.poll() is None, "the training ended too early"
            assert time.monotonic() < deadline
            time.sleep(0.2)


def still_training(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """The processes still running after ``seconds`` (an ended one that no init process reaps is a zombie)."""
    deadline = time.monotonic() + seconds
    while True:
        running = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.05)


def spent_seconds(checkpoints: Path) -> tuple[float, int]:
    """The budget spent at the newest interval checkpoint in ``checkpoints``, and its epoch."""
    newest = max(checkpoints.glob("latest_checkpoint_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[1]))
    state = torch.load(newest, weights_only=False)["trainer"]
    return state[ELAPSED_KEY], state["iteration"] // state["epoch_length"]


def test_a_second_trainer_on_an_output_folder_in_use_is_refused_in_one_line(synthetic_drive, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(train_command(synthetic_drive, out, "--set", "ensemble_members=1", "--set",
                                           "max_epochs=100000"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=ENVIRONMENT, start_new_session=True)
    try:
        wait_for_checkpoints(first, [out / "checkpoints"], epoch=1)
        second = subprocess.run([*train_command(synthetic_drive, out, "--set", "ensemble_members=1"), "--resume"],
                                capture_output=True, text=True, env=ENVIRONMENT, timeout=120)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"medseg train: error: {out}: another medseg train (process {first.pid}) is training into this folder"]


def test_members_die_with_a_killed_parent_and_resume_finishes_within_the_original_budget(synthetic_drive, tmp_path):
    out, budget_seconds = tmp_path / "ensemble", 60.0
    command = train_command(synthetic_drive, out, "--set", "ensemble_members=2", "--set", "max_epochs=100000",
                            "--set", f"time_budget_minutes={budget_seconds / 60}")
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENVIRONMENT)
    members = []
    try:
        wait_for_checkpoints(parent, [out / f"member{k}" / "checkpoints" for k in (0, 1)], epoch=1)
        members = [child for child in psutil.Process(parent.pid).children() if "--output-dir" in child.cmdline()]
        assert len(members) == 2
        parent.kill()
        parent.wait()
        # at once, not at a member's next line to its parent's closed pipe (an epoch or a long data load later)
        assert not still_training(members, seconds=2.0)
    finally:
        for process in [parent, *members]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                process.kill()
    spent_before = [spent_seconds(out / f"member{k}" / "checkpoints")[0] for k in (0, 1)]
    assert all(0 < spent < budget_seconds for spent in spent_before), spent_before

    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=ENVIRONMENT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for k in (0, 1):
        checkpoints = out / f"member{k}" / "checkpoints"
        assert (checkpoints / "model.pt").is_file()
        spent, epochs = spent_seconds(checkpoints)
        # the last epoch's validation may end past the budget; its checkpoint counts it
        assert spent_before[k] < spent < budget_seconds + 2 * spent / epochs
