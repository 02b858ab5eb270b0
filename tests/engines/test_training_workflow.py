"""Training and evaluation through the bundle workflows, as `medseg train` / `medseg evaluate` run them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from mlflow import MlflowClient
from monai.utils import path_to_sqlite_uri

from medseg.cli import main
from medseg.data.synthetic import ensure_synthetic_drive
from medseg.engines.workflow import MLFLOW_TRACKING, bundle_workflow

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "drive_vessel_unet"
# one tiny network (the bundle itself ships an ensemble of two)
TINY = ["--set", "network_features=[4,8,16]", "--set", "patch_size=[32,32]", "--set", "roi_size=[64,64]",
        "--set", "val_images=1", "--set", "batch_images=2", "--set", "patches_per_image=2",
        "--set", "ensemble_members=1"]


@pytest.fixture(scope="module")
def synthetic_drive(tmp_path_factory) -> Path:
    return ensure_synthetic_drive(tmp_path_factory.mktemp("data") / "drive", n_training=4, n_test=2, seed=1)


def _overrides(argv: list[str]) -> dict:
    pairs = dict(argv[i + 1].split("=", 1) for i in range(0, len(argv), 2))
    return {key: json.loads(value) for key, value in pairs.items()}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


class SimulatedCrash(RuntimeError):
    pass


@pytest.mark.parametrize("ema_momentum", [None, 0.3], ids=["online_weights", "ema_weights"])
def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_one(synthetic_drive, tmp_path, ema_momentum):
    common = [str(BUNDLE), "--data-root", str(synthetic_drive), *TINY, "--set", "max_epochs=4",
              "--set", "val_interval=2", "--set", f"ema_momentum={json.dumps(ema_momentum)}"]
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    assert main(["train", *common, "--output-dir", str(tmp_path / "straight"), "--tracking-uri", uri]) == 0

    # the same training, killed when epoch 3 starts (after the epoch-2 checkpoint), then resumed
    interrupted = tmp_path / "interrupted"
    overrides = {**_overrides(TINY), "max_epochs": 4, "val_interval": 2, "ema_momentum": ema_momentum,
                 "dataset_dir": str(synthetic_drive), "output_dir": f"${str(interrupted)!r}", "tracking_uri": uri}
    workflow = bundle_workflow(BUNDLE, "train", overrides=overrides, tracking=str(MLFLOW_TRACKING))
    trainer = workflow.parser.get_parsed_content("train#trainer")

    def crash(engine):
        raise SimulatedCrash("killed")

    trainer.add_event_handler(Events.EPOCH_STARTED(once=3), crash)
    with pytest.raises(RuntimeError) as crashed:
        workflow.run()
    assert isinstance(crashed.value.__cause__, SimulatedCrash)
    assert not (interrupted / "checkpoints" / "model.pt").exists()
    assert main(["train", *common, "--output-dir", str(interrupted), "--tracking-uri", uri, "--resume"]) == 0

    straight, resumed = _weights(tmp_path / "straight" / "checkpoints" / "model.pt"), _weights(
        interrupted / "checkpoints" / "model.pt"
    )
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-4, atol=1e-5, msg=key)

    # the resumed epochs went to the MLflow run the interrupted training started
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("drive_vessel_unet")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    iterations_per_epoch = 2  # 3 training images, 2 per batch
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, 4 * iterations_per_epoch + 1))
        assert run.info.status == "FINISHED"


def test_with_ema_validation_and_the_saved_model_use_the_averaged_weights(synthetic_drive, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(BUNDLE), "--data-root", str(synthetic_drive), *TINY, "--set", "max_epochs=2",
                 "--set", "val_interval=2", "--set", "ema_momentum=0.3", "--output-dir", str(out),
                 "--tracking-uri", path_to_sqlite_uri(tmp_path / "mlflow.db")]) == 0
    (latest,) = (out / "checkpoints").glob("latest*.pt")
    state = _weights(latest)
    final, best = _weights(out / "checkpoints" / "model.pt"), _weights(out / "checkpoints" / "best.pt")
    key = next(k for k in final if k.endswith("conv.weight"))
    # the interval checkpoint was written after the last step: it holds the final online and averaged weights
    torch.testing.assert_close(final[key], state["ema_model"][key])
    assert not torch.allclose(final[key], state["model"][key])
    torch.testing.assert_close(best[key], state["ema_model"][key])  # one validation, at the end


def test_short_training_on_real_drive_crops_learns_vessels(drive_root, tmp_path):
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    argv = ["train", str(BUNDLE), "--data-root", str(drive_root), "--output-dir", str(tmp_path / "run"),
            "--tracking-uri", uri, "--set", "network_features=[8,16,32,64]", "--set", "patch_size=[64,64]",
            "--set", "max_epochs=60", "--set", "val_interval=30", "--set", "val_images=2",
            "--set", "batch_images=4", "--set", "patches_per_image=4", "--set", "autocast_dtype=bfloat16",
            "--set", "learning_rate=0.003", "--set", "ensemble_members=1"]
    assert main(argv) == 0

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("drive_vessel_unet").experiment_id])
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)]
    assert len(losses) == 60 * 5  # 18 training images, 4 per batch
    assert sum(losses[-20:]) / 20 < 0.6 * sum(losses[:20]) / 20
    # all-vessel predictions score F1 ~0.2 on DRIVE (vessels are ~12% of the FOV); a trained net far more
    assert run.data.metrics["val_f1"] > 0.6
    assert run.data.metrics["val_auc_roc"] > 0.85
    summary = json.loads((tmp_path / "run" / "artifacts" / "metrics.json").read_text())
    assert summary["metrics"]["val_f1"] == pytest.approx(run.data.metrics["best_metric"])


def test_monai_bundle_run_trains_like_medseg_train(synthetic_drive, tmp_path):
    """`python -m monai.bundle run` from the bundle folder and `medseg train` are one code path."""
    import subprocess
    import sys

    settings = {**_overrides(TINY), "max_epochs": 2, "val_interval": 1, "seed": 3}
    argv = [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    uri = path_to_sqlite_uri(tmp_path / "mlflow.db")
    assert main(["train", str(BUNDLE), "--data-root", str(synthetic_drive), "--output-dir", str(tmp_path / "cli"),
                 "--tracking-uri", uri, *argv]) == 0
    monai_args = [arg for key, value in settings.items() for arg in (f"--{key}", json.dumps(value))]
    monai_console = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.yaml",
         "--tracking", str(MLFLOW_TRACKING), "--dataset_dir", str(synthetic_drive),
         "--output_dir", str(tmp_path / "monai"), "--tracking_uri", uri, *monai_args],
        cwd=BUNDLE, check=True, capture_output=True, text=True,
    ).stdout
    # MONAI's runner prints its handlers' records, as logging.conf says (medseg's CLI keeps them to --verbose)
    assert "Epoch[2] Metrics -- " in monai_console and "Key metric: val_f1 best value" in monai_console
    cli, monai_run = (_weights(tmp_path / name / "checkpoints" / "model.pt") for name in ("cli", "monai"))
    for key in cli:
        torch.testing.assert_close(monai_run[key], cli[key], msg=key)
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("drive_vessel_unet").experiment_id])
    assert len(runs) == 2 and all("val_f1" in run.data.metrics for run in runs)
    # the training and validation images are each run's MLflow dataset inputs
    for run in runs:
        names = {dataset_input.dataset.name for dataset_input in run.inputs.dataset_inputs}
        assert {"train_dataset_0", "validation_dataset_0"} <= names, names
        # with MLflow's context tag, which its UI shows beside each (MONAI's handler logs none)
        contexts = {entry.dataset.name: {tag.key: tag.value for tag in entry.tags}.get("mlflow.data.context")
                    for entry in run.inputs.dataset_inputs}
        assert contexts["train_dataset_0"] == "training" and contexts["validation_dataset_0"] == "validation"
        assert run.data.params["train_dataset_0_samples"] == "3"
        # and every validation's overlays are MLflow images, one step per epoch
        images = [item.path for item in MlflowClient(uri).list_artifacts(run.info.run_id, "images")]
        steps = {found.group(1) for name in images if (found := re.search(r"overlay_.*[%+]step[%+](\d+)[%+]", name))}
        assert steps == {"1", "2"}, images


def test_an_evaluation_in_the_training_folder_is_a_run_of_its_own_that_leaves_the_trainings_curves_alone(
        synthetic_drive, tmp_path, recwarn):
    out, uri = tmp_path / "run", path_to_sqlite_uri(tmp_path / "mlflow.db")
    common = [str(BUNDLE), "--data-root", str(synthetic_drive), *TINY, "--output-dir", str(out)]
    assert main(["train", *common, "--set", "max_epochs=2", "--set", "val_interval=1", "--tracking-uri", uri]) == 0
    checkpoint = ["--checkpoint", str(out / "checkpoints" / "model.pt")]
    assert main(["evaluate", *common, *checkpoint, "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("drive_vessel_unet").experiment_id])
    (training,) = [run for run in runs if not run.info.run_name.startswith("evaluate_")]
    (evaluation,) = [run for run in runs if run.info.run_name.startswith("evaluate_")]
    # the training's validation curve holds its two epochs only; the evaluation's validation pass is its own
    assert [m.step for m in client.get_metric_history(training.info.run_id, "val_f1")] == [1, 2]
    assert {"val_f1", "test_f1"} <= evaluation.data.metrics.keys()
    assert evaluation.data.tags["mlflow.parentRunId"] == training.info.run_id
    assert evaluation.info.status == "FINISHED"
    # evaluated into another store than the training's: a run there, not nested, and no tracking lost
    other = path_to_sqlite_uri(tmp_path / "other.db")
    assert main(["evaluate", *common, *checkpoint, "--tracking-uri", other]) == 0
    (elsewhere,) = MlflowClient(other).search_runs(
        [MlflowClient(other).get_experiment_by_name("drive_vessel_unet").experiment_id])
    assert {"val_f1", "test_f1"} <= elsewhere.data.metrics.keys() and "mlflow.parentRunId" not in elsewhere.data.tags
    assert not [w for w in recwarn if "tracking lost" in str(w.message)]


def test_an_ensemble_bundle_trains_its_members_at_once_with_their_own_seeds_on_one_split(synthetic_drive, tmp_path):
    out, uri = tmp_path / "ensemble", path_to_sqlite_uri(tmp_path / "mlflow.db")
    assert main(["train", str(BUNDLE), "--data-root", str(synthetic_drive), *TINY, "--set", "ensemble_members=2",
                 "--set", "max_epochs=1", "--set", "val_interval=1", "--set", "seed=3", "--output-dir", str(out),
                 "--tracking-uri", uri]) == 0
    first, second = (_weights(out / f"member{k}" / "checkpoints" / "model.pt") for k in range(2))
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[key], second[key]) for key in first)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("drive_vessel_unet").experiment_id])
    # one run of the ensemble, holding its own validation metrics, with the members' runs as its children
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    members = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(members) == 2
    assert sorted((run.data.params["seed"], run.data.params["split_seed"]) for run in members) == [("13", "3"), ("3", "3")]
    assert parent.data.params["ensemble_members"] == "2" and parent.data.tags["medseg.kind"] == "ensemble"
    report = json.loads((out / "metrics_val.json").read_text())
    assert parent.data.metrics["val_f1"] == pytest.approx(report["threshold_0.5"]["f1"])
    assert all(run.info.status == "FINISHED" for run in runs)
    # the members' outputs evaluate as one network
    assert main(["evaluate", str(BUNDLE), "--data-root", str(synthetic_drive), *TINY, "--split", "val",
                 "--checkpoint", str(out / "member0" / "checkpoints" / "model.pt"),
                 "--checkpoint", str(out / "member1" / "checkpoints" / "model.pt"),
                 "--output-dir", str(tmp_path / "eval"), "--tracking-uri", uri]) == 0
    assert json.loads((tmp_path / "eval" / "metrics_val.json").read_text())["images"] == 1
    # and their evaluation is nested under the ensemble's run
    (evaluation,) = client.search_runs([parent.info.experiment_id], filter_string="tags.mlflow.runName LIKE 'evaluate_%'")
    assert evaluation.data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_a_failing_member_fails_the_ensemble_training_naming_its_log(synthetic_drive, tmp_path, capsys):
    out = tmp_path / "ensemble"
    code = main(["train", str(BUNDLE), "--data-root", str(synthetic_drive), *TINY, "--set", "ensemble_members=2",
                 "--set", "max_epochs=1", "--set", "learning_rate=-1.0", "--output-dir", str(out),
                 "--tracking-uri", path_to_sqlite_uri(tmp_path / "mlflow.db")])
    assert code == 1
    # both members fail; the first to end is reported, with its log, and the other is stopped
    failed = re.search(r"training failed: member (\d) \(exit code \d+, see (\S+)\)", capsys.readouterr().err)
    assert failed, "no failed member reported"
    assert Path(failed.group(2)) == out / f"member{failed.group(1)}" / "train.log"
    assert "Invalid learning rate" in Path(failed.group(2)).read_text()
