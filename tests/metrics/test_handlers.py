"""The metric adapters inside a real MONAI SupervisedEvaluator: mask read from the batch, values published."""

import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.transforms import Activationsd

from medseg.metrics import FOVVesselMetricHandler, FOVVesselMetrics, SegmentationMetricHandler, SegmentationMetrics


def vessel_data(count: int = 5) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    data = []
    for index in range(count):
        label = (torch.rand(1, 12, 10, generator=generator) < 0.2).float()
        logits = 3 * label - 1.5 + torch.randn(1, 12, 10, generator=generator)
        mask = (torch.rand(1, 12, 10, generator=generator) < 0.8).float()
        data.append({"image": logits, "label": label, "mask": mask, "id": str(index)})
    return data


def run_identity_evaluator(data: list[dict], handler, decollate: bool = True, **kwargs) -> SupervisedEvaluator:
    """An evaluator whose network returns its input, so ``pred`` is the stored image."""
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2),
        network=torch.nn.Identity(),
        key_val_metric={"val_key": handler},
        decollate=decollate,
        **kwargs,
    )
    evaluator.run()
    return evaluator


@pytest.mark.parametrize("decollate", [True, False])
def test_fov_handler_publishes_the_pooled_metrics(decollate):
    data = vessel_data()
    evaluator = run_identity_evaluator(
        data,
        FOVVesselMetricHandler(threshold=0.5, primary="auc_roc", prefix="val_"),
        decollate=decollate,
        postprocessing=Activationsd(keys="pred", sigmoid=True),
    )
    expected = FOVVesselMetrics()
    for item in data:
        expected.update(torch.sigmoid(item["image"]), item["label"], item["mask"])
    reference = expected.compute(0.5)
    metrics = evaluator.state.metrics
    assert metrics["val_key"] == reference["auc_roc"]
    assert {key: metrics[f"val_{key}"] for key in reference} == reference
    assert evaluator.state.best_metric == reference["auc_roc"]


def test_fov_handler_keeps_its_accumulator_after_the_epoch():
    data = vessel_data()
    handler = FOVVesselMetricHandler()
    run_identity_evaluator(data, handler, postprocessing=Activationsd(keys="pred", sigmoid=True))
    threshold = handler.metric.best_f1_threshold()
    assert handler.metric.compute(threshold)["f1"] >= handler.metric.compute(0.5)["f1"]


def test_segmentation_handler_publishes_the_pooled_metrics():
    generator = torch.Generator().manual_seed(0)
    data = [
        {
            "image": torch.randn(3, 8, 6, generator=generator),
            "label": torch.randint(0, 4, (1, 8, 6), generator=generator),
        }
        for _ in range(3)
    ]
    evaluator = run_identity_evaluator(
        data, SegmentationMetricHandler(num_classes=3, ignore_index=3, class_names=["a", "b", "c"], prefix="val_")
    )
    expected = SegmentationMetrics(num_classes=3, ignore_index=3, class_names=["a", "b", "c"])
    for item in data:
        expected.update(item["image"][None], item["label"][None])
    reference = expected.compute()
    assert evaluator.state.metrics["val_key"] == reference["miou"]
    assert {key: evaluator.state.metrics[f"val_{key}"] for key in reference} == reference


def test_unknown_primary_metric_is_rejected():
    with pytest.raises(ValueError, match="primary must be one of"):
        FOVVesselMetricHandler(primary="dice")
    with pytest.raises(ValueError, match="primary must be 'miou'"):
        SegmentationMetricHandler(num_classes=3, primary="iou")
