"""Multi-class semantic segmentation metrics (CamVid protocol) from a pooled confusion matrix.

The confusion matrix is accumulated over every labelled pixel of every image at full resolution;
pixels labelled ``ignore_index`` (CamVid void, 11) never count. From it:

- ``iou_<class>``: TP / (TP + FP + FN) of each class, NaN for a class absent from both the labels and
  the predictions;
- ``miou``: the mean of the per-class IoUs that are defined;
- ``pixel_accuracy``: correctly classified pixels / labelled pixels (global accuracy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.handlers import from_engine

from medseg.metrics.handler import PooledMetricHandler

__all__ = ["SegmentationMetrics", "SegmentationMetricHandler"]


class SegmentationMetrics:
    """Pooled confusion matrix, per-class IoU, mIoU and global pixel accuracy.

    Args:
        num_classes: number of classes C (11 for CamVid).
        ignore_index: label value excluded from every count (11 = CamVid void); may be None.
        class_names: names of the C classes in the ``iou_<name>`` keys; ``0 .. C-1`` when None.
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = None, class_names: Sequence[str] | None = None
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"expected {num_classes} class names, got {len(class_names)}: {list(class_names)}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
        self.reset()

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        # counts[true class, predicted class]
        self.counts = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add the labelled pixels of a batch.

        Args:
            pred: B x C x H x W class scores (argmax taken over C) or a B x 1 x H x W class-index map.
            label: B x 1 x H x W class indices in ``0 .. C-1`` or ``ignore_index``.
        """
        pred, label = torch.as_tensor(pred), torch.as_tensor(label)
        if pred.shape[1] == self.num_classes and label.shape[1] == 1:
            pred = pred.argmax(dim=1, keepdim=True)
        if pred.shape != label.shape:
            raise ValueError(
                f"pred must be B x {self.num_classes} x H x W scores or a class map shaped like label "
                f"{tuple(label.shape)}, got {tuple(pred.shape)}."
            )
        label, pred = label.long(), pred.long()
        labelled = label != self.ignore_index if self.ignore_index is not None else torch.ones_like(label, dtype=bool)
        label, pred = label[labelled], pred[labelled]
        for name, values in (("label", label), ("pred", pred)):
            if values.numel() and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(
                    f"{name} values must lie in 0..{self.num_classes - 1} (or be ignore_index={self.ignore_index}), "
                    f"got values in [{values.min().item()}, {values.max().item()}]."
                )
        counts = torch.bincount(label * self.num_classes + pred, minlength=self.num_classes**2)
        self.counts = self.counts.to(counts.device) + counts.view(self.num_classes, self.num_classes)

    def iou(self) -> np.ndarray:
        """Per-class IoU, shape (C,), NaN where a class is in neither the labels nor the predictions."""
        counts = self.counts.cpu().numpy().astype(np.float64)
        true_positives = np.diag(counts)
        union = counts.sum(axis=0) + counts.sum(axis=1) - true_positives
        return np.divide(true_positives, union, out=np.full_like(true_positives, np.nan), where=union > 0)

    def compute(self) -> dict[str, float]:
        """``miou``, ``pixel_accuracy`` and ``iou_<class name>`` of the pooled pixels."""
        total = int(self.counts.sum())
        if total == 0:
            raise ValueError("no labelled pixel was accumulated: call update() with labels other than ignore_index.")
        iou = self.iou()
        return {
            "miou": float(np.nanmean(iou)),
            "pixel_accuracy": float(self.counts.diagonal().sum()) / total,
            **{f"iou_{name}": float(value) for name, value in zip(self.class_names, iou, strict=True)},
        }


class SegmentationMetricHandler(PooledMetricHandler):
    """ignite metric for MONAI evaluators: pooled confusion-matrix metrics over one evaluation epoch.

    Publishes every value of ``SegmentationMetrics.compute()`` as ``engine.state.metrics[prefix + key]`` and
    the ``primary`` one (``miou`` or ``pixel_accuracy``) under the attached name. ``pred`` may be logits,
    probabilities or an argmax map; ``label`` the class-index map.

    Args:
        num_classes, ignore_index, class_names: see ``SegmentationMetrics``.
        primary: ``"miou"`` or ``"pixel_accuracy"``.
        prefix: prepended to every published key, e.g. ``"val_"``.
        output_transform: extracts (pred, label) from ``engine.state.output``.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        class_names: Sequence[str] | None = None,
        primary: str = "miou",
        prefix: str = "",
        output_transform: Callable = from_engine(["pred", "label"]),
    ) -> None:
        if primary not in ("miou", "pixel_accuracy"):
            raise ValueError(f"primary must be 'miou' or 'pixel_accuracy', got {primary!r}.")
        metric = SegmentationMetrics(num_classes, ignore_index, class_names)
        super().__init__(
            metric, compute_fn=metric.compute, primary=primary, prefix=prefix, output_transform=output_transform
        )
