"""Scale-out: the DRIVE U-Net bundle trained by two DistributedDataParallel processes (gloo on CPU), as a user
types it with torchrun, writes one set of checkpoints and one MLflow run, not one per process."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient
from monai.bundle import ConfigParser
from monai.utils import path_to_sqlite_uri

from medseg.data.synthetic import ensure_synthetic_drive
from medseg.inference import read_state_dict

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "drive_vessel_unet"
TINY = {"network_features": [4, 8, 16], "patch_size": [32, 32], "roi_size": [64, 64], "val_images": 2,
        "patches_per_image": 2, "batch_images": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_training_writes_one_checkpoint_set_and_one_mlflow_run(tmp_path):
    # 2 training and 2 validation images: every rank gets one of each
    data = ensure_synthetic_drive(tmp_path / "drive", n_training=4, n_test=1)
    output, uri = tmp_path / "out", path_to_sqlite_uri(tmp_path / "mlflow.db")
    torchrun = Path(sys.executable).with_name("torchrun")
    settings = [arg for key, value in TINY.items() for arg in (f"--{key}", json.dumps(value))]
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
         "-m", "monai.bundle", "run", "--config_file", "['configs/train.yaml','configs/multi_gpu_train.yaml']",
         "--tracking", str(REPO / "configs" / "mlflow_tracking.yaml"), "--dataset_dir", str(data),
         "--output_dir", str(output), "--tracking_uri", uri, "--max_epochs", "2", "--val_interval", "1", *settings],
        cwd=BUNDLE, capture_output=True, text=True,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    checkpoints = sorted(path.name for path in (output / "checkpoints").iterdir())
    assert checkpoints == ["best.pt", "latest_checkpoint_epoch=2.pt", "model.pt"]
    # saved without DDP's "module." prefix: the weights load into the plain network of evaluate/inference
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    # torchrun trains one network: one member of the bundle's ensemble
    parser.update({"network_features": TINY["network_features"], "ensemble_members": 1})
    with contextlib.chdir(BUNDLE):
        network = parser.get_parsed_content("network_def")
    network.load_state_dict(read_state_dict(output / "checkpoints" / "model.pt"))

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("drive_vessel_unet").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_f1")] == [1, 2]
