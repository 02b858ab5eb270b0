"""The CamVid evaluation report: pooled metrics as JSON, absent classes as null, one table column per split."""

import json

import torch

from medseg.engines import write_segmentation_report
from medseg.engines.evaluation import report_table
from medseg.metrics import SegmentationMetrics


def test_report_holds_pooled_metrics_with_null_for_absent_classes_and_renders_as_a_table(tmp_path):
    metrics = SegmentationMetrics(num_classes=3, ignore_index=3, class_names=["sky", "road", "car"])
    label = torch.tensor([[[[0, 0, 1, 3]]]])
    pred = torch.tensor([[[[0, 1, 1, 1]]]])  # the void pixel's prediction never counts; "car" appears nowhere
    metrics.update(pred, label)

    path = tmp_path / "metrics_test.json"
    report = write_segmentation_report(path, metrics, images=1, split="test")

    assert json.loads(path.read_text()) == report
    assert report["images"] == 1
    assert report["test"]["iou_sky"] == 0.5 and report["test"]["iou_road"] == 0.5
    assert report["test"]["iou_car"] is None
    assert report["test"]["miou"] == 0.5
    assert abs(report["test"]["pixel_accuracy"] - 2 / 3) < 1e-9
    table = report_table(report).splitlines()
    assert table[0].split() == ["metric", "test"]
    assert table[2].split() == ["miou", "0.5000"]
    assert ["iou_car", "-"] in [line.split() for line in table]
