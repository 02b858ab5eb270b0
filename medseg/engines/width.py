"""The widening of trained weights, measured on labelled photographs: how much wider than the label convention they
mark vessels on a photograph shrunk to their training FOV width (``medseg.fundus.upsampled_edge_radius`` erodes it
back). Weights fine-tuned on a camera's resampled photographs mark them narrower than weights that never saw one,
so one library constant over-erodes the first (bench/results/fine_tune_avx2.md: 0.28 network pixels against the
library's 0.45); the widening is measured per weights, as a validation threshold is, and on the same footing: the
photographs it is measured on are scored with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

from medseg.data import read_vessel_label, validate_vessel_records
from medseg.engines.evaluation import record_fov, write_vessel_folder_report
from medseg.fundus import FundusSteps, upsampled_edge_radius
from medseg.inference import (
    ImageMeta, InferenceSettings, LoadedModel, predict_image, prepare_network, read_image,
)
from medseg.metrics.width import vessel_width_sums

__all__ = [
    "WIDENING_GRID", "HeldOutPrediction", "MeasuredWidening", "eroded_masks", "measure_widening",
    "measure_widening_and_score", "predict_held_out", "widening_of", "zero_crossing",
]

# the widenings a measurement compares, network pixels over both edges; beyond 0.8 the most eroded mask loses
# the thinnest vessels of a photograph shrunk three-fold, and the width would be read on thick vessels only
WIDENING_GRID = tuple(round(0.1 * k, 1) for k in range(9))


@dataclass(frozen=True)
class MeasuredWidening:
    """The widening of some weights (network pixels) and what it was read from.

    Attributes:
        widening: where the pooled width error crosses zero, interpolated on WIDENING_GRID (its ends where it
            does not cross).
        photographs: the shrunk photographs whose vessels were measured.
        errors: (len(WIDENING_GRID),) pooled error of width (predicted - label, network pixels) at each widening.
        per_photograph: each measured photograph's own widening, in the order of the records: how far one
            photograph is from another tells how far the pooled widening can be trusted.
    """

    widening: float
    photographs: int
    errors: tuple[float, ...]
    per_photograph: tuple[float, ...] = ()

    @property
    def clamped(self) -> bool:
        """The error does not cross zero inside WIDENING_GRID: the widening is one of its ends."""
        return not self.errors[0] > 0 >= self.errors[-1]


class HeldOutPrediction(NamedTuple):
    """One labelled photograph's window pass: its record, (1, h, w) probabilities at the network's scale, the
    fundus steps that bring them back (``None`` for a volume) and its (H, W) bool FOV (``None``: no disc found)."""

    record: Mapping[str, str]
    probabilities: torch.Tensor
    steps: FundusSteps | None
    fov: np.ndarray | None


def eroded_masks(network: torch.nn.Module, image: np.ndarray, meta: ImageMeta, settings: InferenceSettings,
                 fov: np.ndarray, widenings: Sequence[float], device: str | torch.device = "cpu",
                 ) -> tuple[list[np.ndarray], np.ndarray, float]:
    """Predict the (C, H, W) ``image`` once as ``medseg infer`` does with the model's completed ``settings``, then
    bring the probabilities back with the erosion off and with that of each of ``widenings``.

    Returns:
        the (H, W) bool masks at the settings' threshold (erosion off, then one per widening); the part of the (H, W)
        ``fov`` where every erosion's disc lies inside it (the outside is zero, where ``medseg infer`` zeroes it
        after eroding: pixels nearer the rim are not the map it writes); and the photograph's scale factor.
    """
    probabilities, steps = predict_image(network, image, meta, settings, fov, device=device, at_network_scale=True)
    masks, inside = _masks_at(probabilities, steps, fov, settings.threshold, widenings)
    return masks, inside, steps.factor


def _masks_at(probabilities: torch.Tensor, steps: FundusSteps, fov: np.ndarray, threshold: float,
              widenings: Sequence[float]) -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`eroded_masks` of one window pass (``probabilities`` at the network's scale)."""
    radii = [upsampled_edge_radius(steps.factor, widening) for widening in widenings]
    maps = (replace(steps, erosion_radius=radius).after(probabilities.clone()) for radius in (0.0, *radii))
    masks = [probabilities[0].cpu().numpy() >= threshold for probabilities in maps]
    # an erosion reads bilinearly up to ceil(radius) + 1 pixels away along each axis; 3 more keep off the rim
    inside = ndimage.binary_erosion(fov, structure=np.ones((3, 3)), iterations=math.ceil(max(radii)) + 4)
    return masks, inside


def predict_held_out(model: LoadedModel, records: Sequence[Mapping[str, str]],
                     device: str | torch.device = "cpu") -> list[HeldOutPrediction]:
    """The window pass of every photograph of ``records`` (checked by the caller), float32 on PyTorch, each with
    its FOV as :func:`~medseg.engines.evaluation.evaluate_vessel_folder` takes it. The maps are kept at the
    network's scale: a photograph shrunk to it costs what its network-sized map does."""
    model = model.with_settings(precision="float32", runtime="torch")
    network = prepare_network(model, device)
    predictions = []
    for record in records:
        image, meta = read_image(Path(record["image"]))
        fov = record_fov(record, image, meta)
        probabilities, steps = predict_image(network, image, meta, model.settings, fov, device=device,
                                             at_network_scale=True)
        predictions.append(HeldOutPrediction(record, probabilities, steps, fov))
    return predictions


def measure_widening(model: LoadedModel, records: Sequence[Mapping[str, str]], *,
                     label_positive: Sequence[int] | None = None,
                     device: str | torch.device = "cpu") -> MeasuredWidening | None:
    """The widening of ``model``'s weights on the labelled photographs ``records`` ({"id", "image", "label"[,
    "mask"]}, checked first as :func:`~medseg.engines.evaluation.evaluate_vessel_folder` checks them), float32
    (:func:`widening_of` their :func:`predict_held_out`)."""
    validate_vessel_records(records, label_positive)
    return widening_of(predict_held_out(model, records, device), model.settings.threshold, label_positive)


def widening_of(predictions: Sequence[HeldOutPrediction], threshold: float,
                label_positive: Sequence[int] | None = None) -> MeasuredWidening | None:
    """The widening measured on labelled photographs predicted once.

    Each photograph that ``medseg infer`` shrinks (a fundus model, ``--scale auto``; the FOV its mask, else the
    estimate) is eroded for each of WIDENING_GRID; widths are read along its label's centre line
    (:func:`medseg.metrics.width.vessel_width_sums`) and pooled on the network's grid, where an area scales by f
    squared and a length by f: the error is sum(f^2 (mask area - label area)) / sum(f length), so that photographs
    of several resolutions weigh by their vessels' length at the network's scale.

    Returns:
        ``None`` when no photograph is shrunk (the widening is then never used on them).

    Raises:
        ValueError: photographs were shrunk, but no vessel of theirs is found by every mask.
    """
    area_errors, length, shrunk, own = np.zeros(len(WIDENING_GRID)), 0.0, 0, []
    for prediction in predictions:
        steps, fov = prediction.steps, prediction.fov
        if fov is None or steps is None or steps.factor >= 1:  # no disc found, or left at its scale
            continue
        masks, inside = _masks_at(prediction.probabilities, steps, fov, threshold, WIDENING_GRID)
        shrunk += 1
        label = read_vessel_label(prediction.record["label"], label_positive) > 0
        sums = vessel_width_sums(masks[1:], label, inside, 1.0 / steps.factor)
        area_errors += (sums[1:-1] - sums[0]) * steps.factor**2
        length += sums[-1] * steps.factor
        if sums[-1]:
            own.append(zero_crossing(WIDENING_GRID, (sums[1:-1] - sums[0]) * steps.factor / sums[-1]))
    if not shrunk:
        return None
    if not length:
        raise ValueError(f"no vessel of the {shrunk} shrunk photographs is found at every widening: no widening "
                         "of these weights can be measured on them")
    errors = area_errors / length
    return MeasuredWidening(zero_crossing(WIDENING_GRID, errors), len(own), tuple(float(e) for e in errors),
                            tuple(own))


def measure_widening_and_score(model: LoadedModel, records: Sequence[Mapping[str, str]],
                               path: str | os.PathLike, *, label_positive: Sequence[int] | None = None,
                               device: str | torch.device = "cpu") -> tuple[MeasuredWidening | None, dict]:
    """The widening of ``model``'s weights on ``records`` (:func:`measure_widening`) and the report
    :func:`~medseg.engines.evaluation.evaluate_vessel_folder` writes for the model eroding by it, the photographs
    predicted once for both (what ``medseg bundle ship --new-bundle`` scores a bundle with)."""
    validate_vessel_records(records, label_positive)
    predictions = predict_held_out(model, records, device)
    widening = widening_of(predictions, model.settings.threshold, label_positive)
    settings = model.settings
    if widening is not None:
        settings = replace(settings, resampled_vessel_widening=widening.widening)
    maps = ((prediction.record,
             prediction.steps.eroding_as(settings).after(prediction.probabilities) if prediction.steps is not None
             else prediction.probabilities,
             prediction.fov) for prediction in predictions)
    report = write_vessel_folder_report(maps, path, label_positive=label_positive,
                                        validation_threshold=settings.validation_threshold)
    return widening, report


def zero_crossing(widenings: Sequence[float], errors: np.ndarray) -> float:
    """Where ``errors`` ((len(widenings),), falling as ``widenings`` rise: more erosion, narrower vessels) first
    reach zero, linearly interpolated, to 0.01; the first widening where they start at or below zero, the last
    where they stay above."""
    below = np.flatnonzero(errors <= 0)
    if not below.size:
        return float(widenings[-1])
    k = int(below[0])
    if k == 0:
        return float(widenings[0])
    step = errors[k - 1] / (errors[k - 1] - errors[k])
    return round(float(widenings[k - 1] + step * (widenings[k] - widenings[k - 1])), 2)
