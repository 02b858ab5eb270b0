"""DRIVE-protocol vessel metrics: pooled over FOV pixels, exact confusion matrices, AUCs as scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from medseg.metrics import FOVVesselMetrics

# 8 FOV pixels whose confusion matrices are worked out by hand in the tests below, plus 2 outside the FOV
PROB = torch.tensor([0.9, 0.6, 0.4, 0.2, 0.7, 0.1, 0.55, 0.3, 0.95, 0.05])
LABEL = torch.tensor([1.0, 1, 1, 0, 0, 0, 1, 0, 0, 1])
MASK = torch.tensor([1.0, 1, 1, 1, 1, 1, 1, 1, 0, 0])


def as_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(1, 1, 2, 5)


def hand_example() -> FOVVesselMetrics:
    metrics = FOVVesselMetrics()
    metrics.update(as_image(PROB), as_image(LABEL), as_image(MASK))
    return metrics


def random_images(seed: int, shape=(3, 1, 32, 40)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    label = (torch.rand(shape, generator=generator) < 0.15).float()
    prob = (0.6 * torch.rand(shape, generator=generator) + 0.35 * label).clamp(0, 1)
    mask = (torch.rand(shape, generator=generator) < 0.7).float()
    return prob, label, mask


def test_confusion_metrics_at_half_match_hand_count():
    # inside the FOV at 0.5: TP = {0.9, 0.6, 0.55}, FN = {0.4}, FP = {0.7}, TN = {0.2, 0.1, 0.3}
    result = hand_example().compute(0.5)
    assert result["sensitivity"] == pytest.approx(3 / 4)
    assert result["specificity"] == pytest.approx(3 / 4)
    assert result["precision"] == pytest.approx(3 / 4)
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert result["threshold"] == 0.5


def test_confusion_metrics_at_other_threshold_match_hand_count():
    # at 0.65: TP = {0.9}, FP = {0.7}, FN = {0.6, 0.4, 0.55}, TN = {0.2, 0.1, 0.3}
    result = hand_example().compute(0.65)
    assert result["sensitivity"] == pytest.approx(1 / 4)
    assert result["specificity"] == pytest.approx(3 / 4)
    assert result["precision"] == pytest.approx(1 / 2)
    assert result["accuracy"] == pytest.approx(4 / 8)
    assert result["f1"] == pytest.approx(2 / (2 + 1 + 3))
    assert result["threshold"] == pytest.approx(0.65, abs=2**-16)


def test_aucs_match_hand_count():
    # 13 of the 16 (vessel, background) pairs are ranked correctly
    result = hand_example().compute()
    assert result["auc_roc"] == pytest.approx(13 / 16)
    # ranked 0.9+ 0.7- 0.6+ 0.55+ 0.4+: precision 1/1, 2/3, 3/4, 4/5 at each vessel pixel
    assert result["auc_pr"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 5) / 4)


def test_best_f1_threshold_maximises_f1():
    metrics = hand_example()
    threshold = metrics.best_f1_threshold()
    # predicting the 5 pixels >= 0.4 gives TP 4, FP 1, FN 0: the best F1 = 8/9, reached for any threshold in (0.3, 0.4]
    assert 0.3 < threshold <= 0.4
    assert metrics.compute(threshold)["f1"] == pytest.approx(8 / 9)


def test_pixels_outside_fov_never_change_the_result():
    prob, label, mask = random_images(seed=0)
    reference = FOVVesselMetrics()
    reference.update(prob, label, mask)
    outside = mask <= 0.5
    generator = torch.Generator().manual_seed(1)
    noisy_prob = torch.where(outside, torch.rand(prob.shape, generator=generator), prob)
    flipped_label = torch.where(outside, 1 - label, label)
    changed = FOVVesselMetrics()
    changed.update(noisy_prob, flipped_label, mask)
    assert changed.compute() == reference.compute()
    assert changed.best_f1_threshold() == reference.best_f1_threshold()


def test_pixels_are_pooled_over_images():
    prob, label, mask = random_images(seed=2)
    one_by_one = FOVVesselMetrics()
    for i in range(prob.shape[0]):
        one_by_one.update(prob[i : i + 1], label[i : i + 1], mask[i : i + 1])
    inside = mask > 0.5
    pooled = FOVVesselMetrics()
    pooled.update(prob[inside], label[inside], torch.ones(int(inside.sum())))
    assert one_by_one.compute() == pooled.compute()


def test_numpy_images_of_any_dtype_or_layout_count_as_tensors_do():
    """One (H, W) image as numpy arrays: float16 probabilities, a bool label, a uint8 mask, a flipped view."""
    prob, label, mask = (t[0, 0] for t in random_images(seed=3))
    prob = prob.half()
    as_tensors = FOVVesselMetrics()
    as_tensors.update(prob.flip(-1), label.flip(-1), mask.flip(-1))
    as_arrays = FOVVesselMetrics()
    as_arrays.update(prob.numpy()[:, ::-1], label.numpy()[:, ::-1] > 0.5, mask.numpy().astype(np.uint8)[:, ::-1])
    assert as_arrays.compute() == as_tensors.compute()


def test_aucs_equal_sklearn_on_probabilities_on_the_bin_grid():
    prob, label, mask = random_images(seed=3)
    num_bins = 1024  # k / 1024 is exact in float32, so every probability lies on a bin edge
    prob = torch.floor(prob * num_bins) / num_bins
    metrics = FOVVesselMetrics(num_bins)
    metrics.update(prob, label, mask)
    inside = (mask > 0.5).numpy()
    y_true, y_score = label.numpy()[inside], prob.numpy()[inside]
    result = metrics.compute()
    assert result["auc_roc"] == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-12)
    assert result["auc_pr"] == pytest.approx(average_precision_score(y_true, y_score), abs=1e-12)


def test_auc_binning_error_stays_within_documented_bound():
    prob, label, mask = random_images(seed=4)
    metrics = FOVVesselMetrics()
    metrics.update(prob, label, mask)
    inside = (mask > 0.5).numpy()
    y_true, y_score = label.numpy()[inside], prob.numpy()[inside]
    background, vessel = metrics.counts.numpy().astype(np.float64)
    bound = 0.5 * np.sum(vessel * background) / (vessel.sum() * background.sum())
    result = metrics.compute()
    assert abs(result["auc_roc"] - roc_auc_score(y_true, y_score)) <= bound + 1e-12
    assert result["auc_pr"] == pytest.approx(average_precision_score(y_true, y_score), abs=1e-3)


def test_roc_and_pr_curves_span_the_unit_square():
    fpr, tpr = hand_example().roc_curve()
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    recall, precision = hand_example().pr_curve()
    assert recall[0] == 1 / 4 and recall[-1] == 1
    assert precision[0] == 1 and precision[-1] == pytest.approx(4 / 8)


def test_reset_forgets_everything():
    metrics = hand_example()
    metrics.reset()
    with pytest.raises(ValueError, match="no FOV pixel"):
        metrics.compute()


def test_bad_inputs_are_rejected_with_a_clear_message():
    metrics = FOVVesselMetrics()
    with pytest.raises(ValueError, match="sigmoid"):
        metrics.update(as_image(PROB * 4 - 2), as_image(LABEL), as_image(MASK))
    with pytest.raises(ValueError, match="same shape"):
        metrics.update(as_image(PROB), LABEL, as_image(MASK))
    with pytest.raises(ValueError, match="threshold"):
        hand_example().compute(1.5)
