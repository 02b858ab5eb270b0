"""Retinal-vessel metrics of the DRIVE protocol, pooled over the field of view (FOV) of all images.

Every pixel inside the FOV masks of all images counts once, as if all images were one long image:
the confusion matrix and the ROC / precision-recall curves are built from the pooled pixels, never
averaged per image. Pixels outside the FOV never count.

Storage: two histograms of the predicted vessel probability (one for vessel pixels, one for
background pixels) over ``num_bins`` equal bins of [0, 1]. Memory and DDP all-reduce cost stay
constant whatever the number of images, unlike the raw pooled pixels (4.4 M FOV pixels on the DRIVE
test set, 6.6 M for a whole DRIVE split, more for HRF-sized images), which would also need a
variable-length gather across ranks. What the binning costs:

- A pixel with probability ``p`` falls in bin ``floor(p * num_bins)`` (``p == 1`` in the last bin).
  With the default ``num_bins = 2**16`` the product is exact in floating point, so confusion-matrix
  metrics at any threshold on the grid ``k / num_bins`` (0.5 included) are exact. Other thresholds are
  rounded up to the grid.
- AUC-ROC and AUC-PR equal ``sklearn.metrics.roc_auc_score`` / ``average_precision_score`` computed on
  probabilities rounded down to the grid. Against the raw probabilities, AUC-ROC differs only through
  vessel/background pixel pairs that share a bin (counted as ties, 1/2, instead of 0 or 1), so the
  error is at most ``0.5 * sum_b(vessel_b * background_b) / (vessels * backgrounds)``.
"""

from __future__ import annotations

import math

from collections.abc import Callable

import numpy as np
import torch
from monai.handlers import from_engine

from medseg.metrics.handler import PooledMetricHandler

__all__ = ["FOVVesselMetrics", "FOVVesselMetricHandler", "VESSEL_METRIC_NAMES"]

VESSEL_METRIC_NAMES = ("auc_roc", "auc_pr", "f1", "accuracy", "sensitivity", "specificity", "precision")


def _as_tensor(pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A tensor of ``pixels`` (a numpy array copied only where torch cannot view it: flipped or strided views)."""
    return torch.as_tensor(np.ascontiguousarray(pixels)) if isinstance(pixels, np.ndarray) else torch.as_tensor(pixels)


def _ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> np.ndarray:
    """``numerator / denominator`` with 0 where the denominator is 0 (sklearn's ``zero_division=0``)."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


class FOVVesselMetrics:
    """Pooled FOV-masked vessel metrics (AUC-ROC, AUC-PR, F1 = Dice, accuracy, sensitivity, specificity,
    precision) following the DRIVE protocol.

    Args:
        num_bins: number of equal probability bins of [0, 1]; thresholds on the grid ``k / num_bins`` are
            exact (see the module docstring for the AUC binning error).

    Example::

        metrics = FOVVesselMetrics()
        for prob, label, mask in validation_batches:  # each B x 1 x H x W
            metrics.update(prob, label, mask)
        threshold = metrics.best_f1_threshold()
        metrics.compute(threshold)  # {"auc_roc": ..., "f1": ..., "threshold": threshold, ...}
    """

    def __init__(self, num_bins: int = 2**16) -> None:
        if num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {num_bins}.")
        self.num_bins = num_bins
        self.reset()

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        # row 0: background pixels per probability bin, row 1: vessel pixels
        self.counts = torch.zeros(2, self.num_bins, dtype=torch.int64)

    def update(self, prob: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray,
               mask: torch.Tensor | np.ndarray) -> None:
        """Add the FOV pixels of a batch, or of one image.

        Args:
            prob: vessel probabilities in [0, 1], typically B x 1 x H x W (any shape, pixels are pooled), a tensor
                or a numpy array.
            label: ground truth of the same shape, vessel where ``label > 0.5`` (bool or numeric).
            mask: FOV mask of the same shape, inside where ``mask > 0.5`` (bool or numeric).
        """
        if not prob.shape == label.shape == mask.shape:
            raise ValueError(
                f"prob, label and mask must have the same shape, got {tuple(prob.shape)}, "
                f"{tuple(label.shape)} and {tuple(mask.shape)}."
            )
        inside = _as_tensor(mask) > 0.5
        # float64 keeps floor(p * num_bins) exact for float32/16 probabilities
        prob = _as_tensor(prob)[inside].double()
        if prob.numel() and (prob.min() < 0 or prob.max() > 1):
            raise ValueError(
                f"prob must lie in [0, 1] (apply a sigmoid to logits first), got values in "
                f"[{prob.min().item():.4g}, {prob.max().item():.4g}]."
            )
        bins = (prob * self.num_bins).long().clamp_(max=self.num_bins - 1)
        is_vessel = (_as_tensor(label)[inside] > 0.5).long()
        counts = torch.bincount(is_vessel * self.num_bins + bins, minlength=2 * self.num_bins)
        self.counts = self.counts.to(counts.device) + counts.view(2, self.num_bins)

    def _cumulative_counts(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """True and false positive counts when predicting vessel for bins ``>= k``, for k = 0 .. num_bins,
        and the totals of vessel and background pixels."""
        background, vessel = self.counts.cpu().numpy().astype(np.int64)
        if background.sum() + vessel.sum() == 0:
            raise ValueError("no FOV pixel was accumulated: call update() with a non-empty mask first.")
        zero = np.zeros(1, dtype=np.int64)
        true_positives = np.concatenate([np.cumsum(vessel[::-1])[::-1], zero])
        false_positives = np.concatenate([np.cumsum(background[::-1])[::-1], zero])
        return true_positives, false_positives, int(vessel.sum()), int(background.sum())

    def _threshold_bin(self, threshold: float) -> int:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}.")
        # round() first so that e.g. 0.3 * 10000 = 3000.0000000000005 stays on bin 3000
        return math.ceil(round(threshold * self.num_bins, 6))

    def compute(self, threshold: float = 0.5) -> dict[str, float]:
        """Metrics of the pooled FOV pixels, a pixel being predicted vessel where ``prob >= threshold``.

        Returns:
            ``auc_roc``, ``auc_pr`` (average precision), ``f1`` (equal to Dice), ``accuracy``,
            ``sensitivity``, ``specificity``, ``precision`` and the ``threshold`` used. Ratios with a zero
            denominator are 0; AUCs are NaN when the FOV pixels hold a single class.
        """
        true_positives, false_positives, vessels, backgrounds = self._cumulative_counts()
        k = self._threshold_bin(threshold)
        tp, fp = int(true_positives[k]), int(false_positives[k])
        fn, tn = vessels - tp, backgrounds - fp
        return {
            "auc_roc": self._auc_roc(true_positives, false_positives, vessels, backgrounds),
            "auc_pr": self._auc_pr(true_positives, false_positives, vessels, backgrounds),
            "f1": float(_ratio(2 * tp, 2 * tp + fp + fn)),
            "accuracy": float(_ratio(tp + tn, vessels + backgrounds)),
            "sensitivity": float(_ratio(tp, vessels)),
            "specificity": float(_ratio(tn, backgrounds)),
            "precision": float(_ratio(tp, tp + fp)),
            "threshold": k / self.num_bins,
        }

    def best_f1_threshold(self) -> float:
        """The grid threshold ``k / num_bins`` that maximises the pooled F1 (the lowest one on ties);
        find it on the validation images, then pass it to ``compute`` on the test images."""
        true_positives, false_positives, vessels, _ = self._cumulative_counts()
        f1 = _ratio(2 * true_positives, true_positives + false_positives + vessels)
        return int(np.argmax(f1[: self.num_bins])) / self.num_bins

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """False and true positive rates, from threshold 1 (nothing predicted) down to 0 (all predicted)."""
        true_positives, false_positives, vessels, backgrounds = self._cumulative_counts()
        return _ratio(false_positives[::-1], backgrounds), _ratio(true_positives[::-1], vessels)

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Recall and precision at every threshold where some pixel is predicted vessel, recall increasing."""
        true_positives, false_positives, vessels, _ = self._cumulative_counts()
        predicted = (true_positives + false_positives)[::-1]
        keep = predicted > 0
        return _ratio(true_positives[::-1], vessels)[keep], _ratio(true_positives[::-1], predicted)[keep]

    @staticmethod
    def _auc_roc(true_positives: np.ndarray, false_positives: np.ndarray, vessels: int, backgrounds: int) -> float:
        if vessels == 0 or backgrounds == 0:
            return float("nan")
        tpr, fpr = true_positives[::-1] / vessels, false_positives[::-1] / backgrounds
        return float(np.trapezoid(tpr, fpr))

    @staticmethod
    def _auc_pr(true_positives: np.ndarray, false_positives: np.ndarray, vessels: int, backgrounds: int) -> float:
        if vessels == 0 or backgrounds == 0:
            return float("nan")
        # average precision: sum over thresholds of (recall increase) x precision, as in scikit-learn
        recall = true_positives[::-1] / vessels
        precision = _ratio(true_positives[::-1], (true_positives + false_positives)[::-1])
        return float(np.sum(np.diff(recall) * precision[1:]))


class FOVVesselMetricHandler(PooledMetricHandler):
    """ignite metric for MONAI evaluators: pooled FOV vessel metrics over one evaluation epoch.

    Publishes every value of ``FOVVesselMetrics.compute(threshold)`` as ``engine.state.metrics[prefix + key]``
    and the ``primary`` one under the attached name (the evaluator's ``key_val_metric`` name). The
    accumulator stays readable as ``handler.metric`` until the next epoch starts (ROC/PR curves,
    ``best_f1_threshold()``).

    ``pred`` must hold probabilities: add ``Activationsd(keys="pred", sigmoid=True)`` to the evaluator's
    postprocessing. The FOV mask is read from ``engine.state.batch[mask_key]``.

    Args:
        threshold: probability threshold of the confusion-matrix metrics.
        primary: one of ``VESSEL_METRIC_NAMES``.
        prefix: prepended to every published key, e.g. ``"val_"``.
        num_bins: probability bins, see ``FOVVesselMetrics``.
        output_transform: extracts (pred, label) from ``engine.state.output``.
        mask_key: key of the FOV mask in the data dict.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        primary: str = "f1",
        prefix: str = "",
        num_bins: int = 2**16,
        output_transform: Callable = from_engine(["pred", "label"]),
        mask_key: str = "mask",
    ) -> None:
        if primary not in VESSEL_METRIC_NAMES:
            raise ValueError(f"primary must be one of {VESSEL_METRIC_NAMES}, got {primary!r}.")
        self.threshold = threshold
        metric = FOVVesselMetrics(num_bins)
        super().__init__(
            metric,
            compute_fn=lambda: metric.compute(self.threshold),
            primary=primary,
            prefix=prefix,
            output_transform=output_transform,
            batch_keys=(mask_key,),
        )
