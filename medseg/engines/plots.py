"""PNG plots of a run: training curves, ROC and precision-recall curves, prediction overlays.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend switch, safe in
threads) and written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from medseg.utils import atomic_path

__all__ = ["plot_overlay", "plot_roc_pr", "plot_training_curves"]


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, bbox_inches="tight")
    return Path(path)


def plot_training_curves(
    losses: Mapping[int, float], validations: Sequence[Mapping[str, float]], path: str | os.PathLike
) -> Path:
    """Mean training loss of every epoch (left) and the metrics of every validation (right) against the epoch.

    Args:
        losses: {epoch: mean training loss of that epoch}.
        validations: one mapping per validation, with ``epoch`` and metric values; the threshold a validation
            used (a key ending in ``threshold``) is a setting, not a metric, and is left out.
    """
    figure = Figure(figsize=(10, 4))
    loss_axes, metric_axes = figure.subplots(1, 2, sharex=True)  # one epoch axis for both
    epochs = sorted(losses)
    loss_axes.plot(epochs, [losses[epoch] for epoch in epochs], marker="o" if len(epochs) <= 30 else None)
    loss_axes.set(xlabel="epoch", ylabel="mean training loss", title="training loss")
    metric_names = sorted({key for entry in validations for key in entry
                           if key != "epoch" and not key.endswith("threshold")})
    validated = [entry["epoch"] for entry in validations]
    for name in metric_names:
        metric_axes.plot(validated, [entry.get(name, np.nan) for entry in validations], marker="o", label=name)
    metric_axes.set(xlabel="epoch", title="validation metrics")
    if metric_names:  # beside the axes, where it hides no curve
        metric_axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    for axes in (loss_axes, metric_axes):
        axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_roc_pr(
    roc: tuple[np.ndarray, np.ndarray], pr: tuple[np.ndarray, np.ndarray], path: str | os.PathLike, title: str = ""
) -> Path:
    """ROC curve (false positive rate, true positive rate) and precision-recall curve (recall, precision)."""
    figure = Figure(figsize=(10, 4.5))
    roc_axes, pr_axes = figure.subplots(1, 2)
    fpr, tpr = roc
    roc_axes.plot(fpr, tpr)
    roc_axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
    roc_axes.set(
        xlabel="false positive rate", ylabel="true positive rate", title=f"ROC (AUC {np.trapezoid(tpr, fpr):.4f})"
    )
    recall, precision = pr
    pr_axes.plot(recall, precision)
    pr_axes.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    for axes in (roc_axes, pr_axes):
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def _display_image(image: torch.Tensor) -> np.ndarray:
    """C x H x W (1 or 3 channels, any range) to an H x W x 3 float array in [0, 1]."""
    array = image.detach().float().cpu().numpy()
    array = np.repeat(array, 3, axis=0) if array.shape[0] == 1 else array[:3]
    low, high = np.percentile(array, [1, 99])
    return np.clip((array - low) / max(high - low, 1e-8), 0, 1).transpose(1, 2, 0)


def plot_overlay(
    image: torch.Tensor,
    label: torch.Tensor,
    pred: torch.Tensor,
    path: str | os.PathLike,
    title: str = "",
    threshold: float = 0.5,
    ignore_index: int | None = None,
    mask: torch.Tensor | None = None,
) -> Path:
    """Image, ground truth and prediction side by side.

    Args:
        image: C x H x W network input.
        label: 1 x H x W binary vessel map or class-index map.
        pred: 1 x H x W vessel probabilities (drawn as TP green, FP red, FN blue), or C x H x W class scores
            (argmax drawn with the label's colours).
        threshold: vessel probability threshold.
        ignore_index: class drawn black in the multi-class panels (CamVid void).
        mask: 1 x H x W FOV mask; vessel errors outside it (which no metric counts) are drawn grey.
    """
    figure = Figure(figsize=(12, 4))
    axes = figure.subplots(1, 3)
    axes[0].imshow(_display_image(image))
    label_map = label.detach().cpu()[0].long().numpy()
    if pred.shape[0] == 1:
        predicted, vessel = (pred.detach().float().cpu()[0] >= threshold).numpy(), label_map > 0
        axes[1].imshow(vessel, cmap="gray")
        errors = np.zeros((*vessel.shape, 3))
        errors[predicted & vessel] = (0, 1, 0)
        errors[predicted & ~vessel] = (1, 0, 0)
        errors[~predicted & vessel] = (0, 0.4, 1)
        if mask is not None:
            errors[(mask.detach().cpu()[0] <= 0.5).numpy()] = (0.3, 0.3, 0.3)
        axes[2].imshow(errors)
        axes[2].set_title("prediction: TP green, FP red, FN blue")
    else:
        num_classes = pred.shape[0]
        predicted = pred.detach().cpu().argmax(dim=0).numpy()
        class_colours = colormaps["tab20"].with_extremes(bad="black")
        for panel, classes in ((axes[1], label_map), (axes[2], predicted)):
            shown = np.ma.masked_equal(classes, ignore_index) if ignore_index is not None else classes
            panel.imshow(shown, cmap=class_colours, vmin=0, vmax=max(num_classes - 1, 1), interpolation="nearest")
        axes[2].set_title("prediction")
    axes[0].set_title("image")
    axes[1].set_title("ground truth")
    for panel in axes:
        panel.set_axis_off()
    if title:
        figure.suptitle(title)
    return _save(figure, path)
