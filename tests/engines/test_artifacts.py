"""RunArtifacts: metrics JSON, curves and overlays of the best validation, written while training runs."""

import json

import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler
from monai.losses import DiceCELoss
from monai.transforms import Activationsd

from medseg.engines import RunArtifacts
from medseg.engines.plots import plot_overlay
from medseg.metrics import FOVVesselMetricHandler


def tiny_evaluator(network: torch.nn.Module, metric: FOVVesselMetricHandler, samples: list[dict]) -> SupervisedEvaluator:
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(samples, batch_size=2),
        network=network,
        postprocessing=Activationsd(keys="pred", sigmoid=True),
        key_val_metric={"val_f1": metric},
    )


def test_training_writes_curves_metrics_roc_and_overlays(tmp_path, vessel_samples):
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 1, 3, padding=1)
    metric = FOVVesselMetricHandler(prefix="val_")
    evaluator = tiny_evaluator(network, metric, vessel_samples(3, seed=1))
    artifacts = RunArtifacts(tmp_path, evaluator=evaluator, vessel_metric=metric, num_images=2)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=3,
        train_data_loader=DataLoader(vessel_samples(4, seed=0), batch_size=2),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=0.05),
        loss_function=DiceCELoss(sigmoid=True),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1), artifacts],
    )
    trainer.run()

    assert [entry["epoch"] for entry in artifacts.history] == [1, 2, 3]
    assert all("val_auc_roc" in entry for entry in artifacts.history)
    assert sorted(artifacts.epoch_losses) == [1, 2, 3] and all(loss > 0 for loss in artifacts.epoch_losses.values())
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["epoch"] == evaluator.state.best_metric_epoch
    assert summary["metrics"]["val_f1"] == evaluator.state.best_metric
    assert summary["key_metric"] == "val_f1"
    assert 0 <= summary["best_f1_threshold"] <= 1
    # written at the best epoch, from that epoch's accumulator: the F1-maximising threshold beats 0.5
    assert summary["metrics_at_best_f1_threshold"]["f1"] >= summary["metrics"]["val_f1"]
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["metrics.json", "overlay_img0.png", "overlay_img1.png", "overlays", "roc_pr.png",
                     "training_curves.png"]
    assert all(path.stat().st_size > 1000 for path in tmp_path.glob("*.png"))
    # every validation's overlays, one folder per epoch (logged to MLflow with the epoch as step)
    epochs = sorted(path.name for path in (tmp_path / "overlays").iterdir())
    assert epochs == ["epoch_0001", "epoch_0002", "epoch_0003"]
    assert all(sorted(p.name for p in (tmp_path / "overlays" / e).iterdir()) == ["overlay_img0.png", "overlay_img1.png"]
               for e in epochs)


def test_the_curves_hold_every_epochs_loss_though_validation_runs_every_other_epoch(tmp_path, vessel_samples):
    network = torch.nn.Conv2d(1, 1, 3, padding=1)
    metric = FOVVesselMetricHandler(prefix="val_")
    evaluator = tiny_evaluator(network, metric, vessel_samples(2, seed=1))
    artifacts = RunArtifacts(tmp_path, evaluator=evaluator, vessel_metric=metric, num_images=1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=4, train_data_loader=DataLoader(vessel_samples(2, seed=0), batch_size=2),
        network=network, optimizer=torch.optim.Adam(network.parameters(), lr=0.05),
        loss_function=DiceCELoss(sigmoid=True),
        train_handlers=[ValidationHandler(validator=evaluator, interval=2), artifacts],
    )
    trainer.run()
    assert [entry["epoch"] for entry in artifacts.history] == [2, 4]
    assert sorted(artifacts.epoch_losses) == [1, 2, 3, 4]


def test_evaluation_alone_writes_metrics_and_overlays_without_curves(tmp_path, vessel_samples):
    network = torch.nn.Conv2d(1, 1, 3, padding=1)
    metric = FOVVesselMetricHandler(prefix="test_")
    evaluator = tiny_evaluator(network, metric, vessel_samples(3, seed=1))
    RunArtifacts(tmp_path, vessel_metric=metric, num_images=5).attach(evaluator)
    evaluator.run()
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["metrics.json", "overlay_img0.png", "overlay_img1.png", "overlay_img2.png", "roc_pr.png"]
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["metrics"]["test_f1"] == evaluator.state.metrics["val_f1"]


def test_multiclass_overlay_draws_void_and_classes(tmp_path):
    label = torch.randint(0, 12, (1, 20, 24))
    scores = torch.randn(11, 20, 24)
    path = plot_overlay(torch.rand(3, 20, 24), label, scores, tmp_path / "camvid.png", ignore_index=11)
    assert path.is_file() and path.stat().st_size > 1000
