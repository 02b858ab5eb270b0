"""CamVid metrics: pooled confusion matrix, per-class IoU, mIoU and pixel accuracy, void ignored."""

import math

import pytest
import torch

from medseg.metrics import SegmentationMetrics

VOID = 3
# (true, predicted) pairs: (0,0) (0,0) (0,1) (1,1) (1,2) (2,2) (2,0) and two void pixels
LABEL = torch.tensor([0, 0, 0, 1, 1, 2, 2, VOID, VOID]).view(1, 1, 3, 3)
PRED = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 0]).view(1, 1, 3, 3)


def hand_example(pred: torch.Tensor = PRED) -> SegmentationMetrics:
    metrics = SegmentationMetrics(num_classes=3, ignore_index=VOID, class_names=["sky", "road", "car"])
    metrics.update(pred, LABEL)
    return metrics


def test_confusion_matrix_matches_hand_count():
    assert hand_example().counts.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 1]]


def test_iou_miou_and_accuracy_match_hand_count():
    result = hand_example().compute()
    # IoU = TP / (row sum + column sum - TP)
    assert result["iou_sky"] == pytest.approx(2 / (3 + 3 - 2))
    assert result["iou_road"] == pytest.approx(1 / (2 + 2 - 1))
    assert result["iou_car"] == pytest.approx(1 / (2 + 2 - 1))
    assert result["miou"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3) / 3)
    assert result["pixel_accuracy"] == pytest.approx(4 / 7)


def test_void_pixels_never_count():
    changed = PRED.clone()
    changed[LABEL == VOID] = 2
    assert hand_example(changed).compute() == hand_example().compute()


def test_class_scores_are_reduced_by_argmax():
    scores = torch.nn.functional.one_hot(PRED[:, 0], 3).permute(0, 3, 1, 2).float() * 5 - 1
    assert hand_example(scores).compute() == hand_example().compute()


def test_class_absent_everywhere_is_left_out_of_the_mean():
    metrics = SegmentationMetrics(num_classes=4)
    metrics.update(torch.tensor([[[[0, 1]]]]), torch.tensor([[[[0, 0]]]]))
    result = metrics.compute()
    assert math.isnan(result["iou_2"]) and math.isnan(result["iou_3"])
    assert result["miou"] == pytest.approx((1 / 2 + 0) / 2)


def test_images_are_pooled():
    metrics = SegmentationMetrics(num_classes=3, ignore_index=VOID)
    metrics.update(PRED[..., :1, :], LABEL[..., :1, :])
    metrics.update(PRED[..., 1:, :], LABEL[..., 1:, :])
    assert metrics.counts.tolist() == hand_example().counts.tolist()


def test_bad_inputs_are_rejected_with_a_clear_message():
    metrics = SegmentationMetrics(num_classes=3, ignore_index=VOID)
    with pytest.raises(ValueError, match="label values must lie in 0..2"):
        metrics.update(PRED.clamp(max=2), LABEL + 1)
    with pytest.raises(ValueError, match="class map shaped like label"):
        metrics.update(PRED[..., :2], LABEL)
    with pytest.raises(ValueError, match="no labelled pixel"):
        metrics.compute()
    with pytest.raises(ValueError, match="expected 3 class names"):
        SegmentationMetrics(num_classes=3, class_names=["sky"])
