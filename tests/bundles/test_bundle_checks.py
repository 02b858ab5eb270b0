"""Every bundle passes MONAI's own bundle tools, each run as a user types it from the bundle folder:
``verify_metadata``, ``verify_net_in_out``, ``ckpt_export``, ``run`` of train.yaml with MONAI's default MLflow
tracking, and ``run`` of evaluate.yaml reproducing the ``eval_metrics`` recorded in metadata.json.

The eval_metrics check needs the shipped ``models/model.pt`` and the real test data; run it alone with
``pytest tests/bundles -k eval_metrics``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from monai.bundle import ConfigParser
from monai.utils import path_to_sqlite_uri

from medseg.cli.bundle import MAX_WEIGHTS_BYTES
from medseg.data.synthetic import ensure_synthetic_drive
from medseg.engines.evaluation import eval_metrics_from_report, write_segmentation_report, write_vessel_report
from medseg.inference import read_state_dict
from medseg.metrics import FOVVesselMetrics, SegmentationMetrics

BUNDLES = sorted(path.parent for path in (Path(__file__).resolve().parents[2] / "bundles").glob("*/configs"))
# smallest settings that still run every part of a training: one epoch, one validation
TINY_TRAINING = {
    "drive_vessel_unet": {"network_features": [4, 8, 16], "patch_size": [32, 32], "roi_size": [64, 64],
                          "val_images": 1, "patches_per_image": 2, "batch_images": 2},
    "fundus_vessel_unet": {"network_features": [4, 8, 16], "patch_size": [32, 32], "roi_size": [64, 64],
                           "val_images": 1, "val_images_les_av": 1, "patches_per_image": 2, "batch_images": 4},
    "drive_vessel_u2net": {"network_width_factor": 0.25, "patch_size": [32, 32], "roi_size": [64, 64],
                           "val_images": 1, "patches_per_image": 2, "batch_images": 2},
    # class weights would read every label of CamVid train; the tiny run uses the unweighted loss
    "camvid_unet": {"network_features": [4, 8, 16], "crop_size": [64, 64], "max_train_images": 4,
                    "max_val_images": 2, "class_weighting": "none", "batch_images": 2},
}
BUNDLE_FILES = [*(f"configs/{name}.yaml" for name in ("train", "evaluate", "inference", "multi_gpu_train")),
                "configs/metadata.json", "configs/logging.conf", "docs/README.md", "LICENSE"]
EXPORT_INPUT_SHAPE = [1, 3, 96, 96]


def monai_bundle(bundle: Path, *args: str) -> str:
    """``python -m monai.bundle ARGS`` from the bundle folder; its output, or a failure showing it."""
    done = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=bundle, capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"monai.bundle {args[0]} failed in {bundle.name}:\n{output[-3000:]}"
    return output


def as_cli_args(settings: dict) -> list[str]:
    return [arg for key, value in settings.items() for arg in (f"--{key}", json.dumps(value))]


def dataset_name(bundle: Path) -> str:
    return ConfigParser.load_config_file(str(bundle / "configs" / "train.yaml"))["dataset_name"]


def data_arguments(bundle: Path, request, tiny: bool) -> list[str]:
    """Where the bundle's data is: a tiny synthetic DRIVE, the real DRIVE, DRIVE and LES-AV (their common
    root), or CamVid."""
    name = dataset_name(bundle)
    if name == "drive+les-av":
        drive = request.getfixturevalue("drive_root")
        request.getfixturevalue("les_av_root")
        return ["--data_root", str(drive.parent)]
    fixture = {"drive": "tiny_drive" if tiny else "drive_root", "camvid": "camvid_root"}[name]
    return ["--dataset_dir", str(request.getfixturevalue(fixture))]


def metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def config_network(bundle: Path) -> torch.nn.Module:
    """``network_def`` of the bundle's inference.yaml, in eval mode (its %macros resolve from the bundle folder)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    with contextlib.chdir(bundle):
        return parser.get_parsed_content("network_def").eval()


@pytest.fixture(scope="module")
def tiny_drive(tmp_path_factory) -> Path:
    return ensure_synthetic_drive(tmp_path_factory.mktemp("data") / "drive", n_training=3, n_test=1)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_shipped_weights_stay_under_the_size_limit_of_committed_binaries(bundle):
    sizes = {path.name: path.stat().st_size for path in (bundle / "models").glob("*.pt")}
    assert sizes and all(size < MAX_WEIGHTS_BYTES for size in sizes.values()), sizes


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_bundle_has_the_monai_layout(bundle):
    assert all((bundle / name).is_file() for name in BUNDLE_FILES), sorted(
        name for name in BUNDLE_FILES if not (bundle / name).is_file())


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_metadata_follows_the_monai_schema(bundle, monai_meta_schema):
    output = monai_bundle(bundle, "verify_metadata", "--meta_file", "configs/metadata.json",
                          "--filepath", str(monai_meta_schema))
    assert "metadata is verified with no error" in output


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_network_takes_and_gives_the_shapes_metadata_declares(bundle):
    output = monai_bundle(bundle, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                          "--config_file", "configs/inference.yaml")
    assert "data shape of network is verified with no error" in output


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_traced_export_equals_the_eager_network(bundle, tmp_path):
    weights = bundle / "models" / "model.pt"
    if not weights.is_file():
        # until trained weights ship, random ones of the configured network: the export check is about the
        # network (traceable, same outputs), not about what training made of it
        torch.manual_seed(0)
        weights = tmp_path / "model.pt"
        torch.save(config_network(bundle).state_dict(), weights)
    exported = tmp_path / "model.ts"
    monai_bundle(bundle, "ckpt_export", "network_def", "--filepath", str(exported), "--ckpt_file", str(weights),
                 "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml",
                 "--use_trace", "True", "--input_shape", json.dumps(EXPORT_INPUT_SHAPE))

    eager = config_network(bundle)
    eager.load_state_dict(read_state_dict(weights))
    windows = torch.rand(2, *EXPORT_INPUT_SHAPE[1:])
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(exported))(windows), eager(windows))


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_training_logs_one_mlflow_run_with_monai_default_tracking(bundle, tmp_path, request):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    monai_bundle(bundle, "run", "--config_file", "configs/train.yaml", "--tracking", "mlflow",
                 *data_arguments(bundle, request, tiny=True), "--output_dir", str(tmp_path / "out"), "--tracking_uri", uri,
                 "--max_epochs", "1", "--val_interval", "1", *as_cli_args(TINY_TRAINING[bundle.name]))

    train = ConfigParser.load_config_file(str(bundle / "configs" / "train.yaml"))
    (val_metric,) = train["validate"]["key_metric"]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(train["experiment_name"]).experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")][:1] == [1]
    assert [m.step for m in client.get_metric_history(run.info.run_id, val_metric)] == [1]
    assert (tmp_path / "out" / "checkpoints" / "model.pt").is_file()


def test_eval_metrics_of_a_vessel_report_are_the_threshold_half_row_and_the_tuned_f1(tmp_path):
    label = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])
    test, validation = FOVVesselMetrics(), FOVVesselMetrics()
    test.update(torch.tensor([[[[0.9, 0.4, 0.3, 0.05]]]]), label, torch.ones_like(label))
    # every threshold in (0.1, 0.8] separates the validation pixels: the lowest one makes the test F1 0.8
    validation.update(torch.tensor([[[[0.9, 0.8, 0.1, 0.05]]]]), label, torch.ones_like(label))
    report = write_vessel_report(tmp_path / "metrics.json", test, validation, test_records=[{"id": "01"}])

    recorded = eval_metrics_from_report(json.loads((tmp_path / "metrics.json").read_text()))

    at_half = {f"test_{k}": v for k, v in report["threshold_0.5"].items() if k != "threshold"}
    assert recorded == {**at_half, "test_f1_val_threshold": pytest.approx(0.8)}
    assert recorded["test_f1"] == pytest.approx(2 / 3)
    assert {"test_auc_roc", "test_sensitivity", "test_specificity"} <= recorded.keys()


def test_eval_metrics_of_a_segmentation_report_are_miou_and_pixel_accuracy(tmp_path):
    metrics = SegmentationMetrics(num_classes=2, ignore_index=2, class_names=["sky", "road"])
    metrics.update(torch.tensor([[[[0, 1, 1, 1]]]]), torch.tensor([[[[0, 0, 1, 2]]]]))
    report = write_segmentation_report(tmp_path / "metrics.json", metrics, images=1, split="test")

    assert eval_metrics_from_report(report) == {"test_miou": 0.5, "test_pixel_accuracy": pytest.approx(2 / 3)}
    validation = write_segmentation_report(tmp_path / "val.json", metrics, images=1, split="val")
    with pytest.raises(ValueError, match="not a test-split evaluation report"):
        eval_metrics_from_report(validation)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_evaluate_reproduces_the_eval_metrics_of_metadata(bundle, tmp_path, request):
    """Release check (the shipped weights on the real test split): ``pytest tests/bundles -k eval_metrics``."""
    weights = bundle / "models" / "model.pt"
    recorded = metadata(bundle).get("eval_metrics")
    if not weights.is_file() or not recorded:
        pytest.fail(
            f"{bundle.name}: a released bundle ships models/model.pt and records its test metrics in "
            f"configs/metadata.json eval_metrics (weights present: {weights.is_file()}, eval_metrics: {recorded!r}); "
            "ship weights with `medseg bundle ship BUNDLE CHECKPOINT`, which records both"
        )
    metrics_file = tmp_path / "metrics.json"
    monai_bundle(bundle, "run", "--config_file", "configs/evaluate.yaml", *data_arguments(bundle, request, tiny=False),
                 "--output_dir", str(tmp_path), "--metrics_file", str(metrics_file))

    assert eval_metrics_from_report(json.loads(metrics_file.read_text())) == pytest.approx(recorded, abs=1e-4)
