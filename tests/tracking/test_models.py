"""medseg networks as MLflow models: logged when training ends, registered by ``medseg bundle ship``, loaded with
``mlflow.pyfunc`` and served by ``mlflow models serve``, predicting what ``medseg infer`` writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from monai.utils import path_to_sqlite_uri
from PIL import Image

from medseg.cli import main
from medseg.data.synthetic import ensure_synthetic_drive
from medseg.tracking import tracking_at
from medseg.tracking.models import log_bundle_model, sha256_of

REPO = Path(__file__).resolve().parents[2]
TINY = ["--set", "network_features=[4,8]", "--set", "patch_size=[32,32]", "--set", "roi_size=[64,64]",
        "--set", "val_images=1", "--set", "batch_images=2", "--set", "patches_per_image=2",
        "--set", "ensemble_members=1", "--set", "max_epochs=1"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The DRIVE bundle exported, its own weights shipped into it (evaluated on a synthetic DRIVE) and registered."""
    work = tmp_path_factory.mktemp("ship")
    data = ensure_synthetic_drive(work / "drive", n_training=3, n_test=1, seed=3)
    bundle, uri = work / "drive_vessel_unet", path_to_sqlite_uri(work / "mlflow.db")
    assert main(["bundle", "export", "drive_vessel_unet", str(bundle)]) == 0
    weights = work / "weights.pt"
    weights.write_bytes((bundle / "models" / "model.pt").read_bytes())
    assert main(["bundle", "ship", str(bundle), str(weights), "--data-root", str(data), "--set", "val_images=1",
                 "--output-dir", str(work / "out"), "--tracking-uri", uri, "--dtype", "float16"]) == 0
    image = next((data / "test" / "images").iterdir())
    return bundle, uri, image


def infer_probabilities(bundle: Path, image: Path, out: Path) -> np.ndarray:
    assert main(["infer", str(bundle), str(image), "-o", str(out), "--save-prob", "float16"]) == 0
    return np.load(out / f"{image.name.split('.')[0]}_prob.npy").astype(np.float32)[0]


def test_ship_registers_the_bundle_with_its_metrics_and_the_weights_sha256(shipped):
    bundle, uri, _ = shipped
    client = MlflowClient(uri)
    version = client.get_model_version("drive_vessel_unet", "1")
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert version.tags["weights_sha256"] == sha256_of(bundle / "models" / "model.pt")
    assert float(version.tags["test_f1"]) == pytest.approx(metadata["eval_metrics"]["test_f1"])
    run = client.get_run(version.run_id)
    assert run.data.metrics["test_f1"] == pytest.approx(metadata["eval_metrics"]["test_f1"])


def test_the_registered_model_predicts_what_medseg_infer_writes(shipped, tmp_path):
    bundle, uri, image = shipped
    with tracking_at(uri):
        model = mlflow.pyfunc.load_model("models:/drive_vessel_unet/1")
    pixels = np.asarray(Image.open(image).convert("RGB"))
    probabilities = model.predict(pixels)
    assert probabilities.shape == pixels.shape[:2] and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, infer_probabilities(bundle, image, tmp_path / "infer"), atol=1e-3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_models_serve_answers_with_the_probabilities_of_an_image(shipped, tmp_path):
    _, uri, image = shipped
    pixels = np.asarray(Image.open(image).convert("RGB"))[200:264, 200:264]  # a small image travels as JSON
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/drive_vessel_unet/1", "--env-manager",
         "local", "--host", "127.0.0.1", "--port", str(port)],
        # as in an activated venv: the server's uvicorn is found beside this Python
        env={**os.environ, "MLFLOW_TRACKING_URI": uri,
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not come up"
                time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": pixels.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            served = np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
    finally:
        server.terminate()
        server.wait(timeout=60)
    with tracking_at(uri):
        local = mlflow.pyfunc.load_model("models:/drive_vessel_unet/1").predict(pixels)
    assert served.shape == (64, 64)
    np.testing.assert_allclose(served, local, atol=1e-6)


def test_a_training_ends_by_logging_its_network_as_an_mlflow_model(tmp_path):
    data = ensure_synthetic_drive(tmp_path / "drive", n_training=3, n_test=1, seed=4)
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    out = tmp_path / "run"
    assert main(["train", str(REPO / "bundles" / "drive_vessel_unet"), "--data-root", str(data), *TINY,
                 "--output-dir", str(out), "--tracking-uri", uri, "--quiet"]) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("drive_vessel_unet")
    # opened in MLflow's UI on the runs table and charts; the run names its source as MLflow's own tags do
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["mlflow.source.name"] == "medseg" and "mlflow.source.type" in run.data.tags
    with tracking_at(uri):
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, -1, 3)
    image = np.asarray(Image.open(next((data / "test" / "images").iterdir())).convert("RGB"))
    probabilities = model.predict(image)
    assert probabilities.shape == image.shape[:2] and 0 <= probabilities.min() <= probabilities.max() <= 1


    # its evaluation is a run nested under it, with the test metrics and the weights' sha256
    weights = out / "checkpoints" / "model.pt"
    assert main(["evaluate", str(REPO / "bundles" / "drive_vessel_unet"), "--data-root", str(data), *TINY,
                 "--checkpoint", str(weights), "--output-dir", str(out), "--tracking-uri", uri]) == 0
    (evaluation,) = client.search_runs([experiment.experiment_id],
                                       filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert evaluation.data.tags["medseg.weights_sha256"] == sha256_of(weights)
    assert "test_f1" in evaluation.data.metrics and evaluation.info.status == "FINISHED"



def test_logging_a_bundle_model_prints_no_download_progress_bars_and_leaves_the_environment_as_it_was(shipped,
                                                                                                     capfd):
    bundle, uri, _ = shipped
    client = MlflowClient(uri)
    run = client.create_run(client.get_experiment_by_name("drive_vessel_unet").experiment_id)
    before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    model_uri = log_bundle_model(bundle, bundle / "models" / "model.pt", run.info.run_id, uri)
    assert model_uri.startswith("models:/")
    assert "Downloading artifacts" not in capfd.readouterr().err
    assert os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR") == before
