"""The widening of trained weights, measured on labelled photographs: how much wider than the label convention they
mark vessels on a photograph shrunk to their training FOV width (``medseg.fundus.upsampled_edge_radius`` erodes it
back). Weights fine-tuned on a camera's resampled photographs mark them narrower than weights that never saw one,
so one library constant over-erodes the first (bench/results/fine_tune_avx2.md: 0.28 network pixels against the
library's 0.45); the widening is measured per weights, as a validation threshold is, and on the same footing: the
photographs it is measured on are scored with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medseg.data import read_vessel_label, validate_vessel_records
from medseg.engines.evaluation import record_fov
from medseg.fundus import erode, upsampled_edge_radius
from medseg.inference import ImageMeta, InferenceSettings, LoadedModel, predict_image, prepare_network, read_image
from medseg.metrics.width import vessel_width_sums

__all__ = ["WIDENING_GRID", "MeasuredWidening", "eroded_masks", "measure_widening", "zero_crossing"]

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


def eroded_masks(network: torch.nn.Module, image: np.ndarray, meta: ImageMeta, settings: InferenceSettings,
                 fov: np.ndarray, widenings: Sequence[float], device: str | torch.device = "cpu",
                 ) -> tuple[list[np.ndarray], np.ndarray, float]:
    """Predict the (C, H, W) ``image`` once as ``medseg infer`` does with the model's completed ``settings`` but
    the erosion off, then erode its probabilities for each of ``widenings``.

    Returns:
        the (H, W) bool masks at the settings' threshold (erosion off, then one per widening); the part of the (H, W)
        ``fov`` where every erosion's disc lies inside it (the outside is zero, where ``medseg infer`` zeroes it
        after eroding: pixels nearer the rim are not the map it writes); and the photograph's scale factor.
    """
    prediction = predict_image(network, image, meta, replace(settings, upsampled_edge_erosion=False), fov,
                               device=device)
    radii = [upsampled_edge_radius(prediction.steps.factor, widening) for widening in widenings]
    maps = [prediction.probabilities, *(erode(prediction.probabilities, r) if r else prediction.probabilities
                                         for r in radii)]
    # an erosion reads bilinearly up to ceil(radius) + 1 pixels away along each axis; 3 more keep off the rim
    inside = ndimage.binary_erosion(fov, structure=np.ones((3, 3)), iterations=math.ceil(max(radii)) + 4)
    masks = [probabilities[0].cpu().numpy() >= settings.threshold for probabilities in maps]
    return masks, inside, prediction.steps.factor


def measure_widening(model: LoadedModel, records: Sequence[Mapping[str, str]], *,
                     label_positive: Sequence[int] | None = None,
                     device: str | torch.device = "cpu") -> MeasuredWidening | None:
    """The widening of ``model``'s weights on the labelled photographs ``records`` ({"id", "image", "label"[,
    "mask"]}, checked first as :func:`~medseg.engines.evaluate_vessel_folder` checks them), float32.

    Each photograph that ``medseg infer`` shrinks (a fundus model, ``--scale auto``; the FOV its mask, else the
    estimate) is predicted once and eroded for each of WIDENING_GRID; widths are read along its label's centre
    line (:func:`medseg.metrics.width.vessel_width_sums`) and pooled on the network's grid, where an area scales
    by f squared and a length by f: the error is sum(f^2 (mask area - label area)) / sum(f length), so that
    photographs of several resolutions weigh by their vessels' length at the network's scale.

    Returns:
        ``None`` when no photograph is shrunk (the widening is then never used on them).

    Raises:
        ValueError: photographs were shrunk, but no vessel of theirs is found by every mask.
    """
    validate_vessel_records(records, label_positive)
    model = model.with_settings(precision="float32", runtime="torch")
    network = prepare_network(model, device)
    area_errors, length, shrunk, own = np.zeros(len(WIDENING_GRID)), 0.0, 0, []
    for record in records:
        image, meta = read_image(Path(record["image"]))
        fov = record_fov(record, image, meta)
        if fov is None:  # no disc found: the photograph keeps its scale
            continue
        masks, inside, factor = eroded_masks(network, image, meta, model.settings, fov, WIDENING_GRID, device)
        if factor >= 1:
            continue
        shrunk += 1
        sums = vessel_width_sums(masks[1:], read_vessel_label(record["label"], label_positive) > 0, inside,
                                 1.0 / factor)
        area_errors += (sums[1:-1] - sums[0]) * factor**2
        length += sums[-1] * factor
        if sums[-1]:
            own.append(zero_crossing(WIDENING_GRID, (sums[1:-1] - sums[0]) * factor / sums[-1]))
    if not shrunk:
        return None
    if not length:
        raise ValueError(f"no vessel of the {shrunk} shrunk photographs is found at every widening: no widening "
                         "of these weights can be measured on them")
    errors = area_errors / length
    return MeasuredWidening(zero_crossing(WIDENING_GRID, errors), len(own), tuple(float(e) for e in errors),
                            tuple(own))


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
