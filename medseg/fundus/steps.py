"""The fundus steps around a generic sliding-window pass over one 2D photograph.

:meth:`FundusSteps.plan` decides, once per photograph, what the geometry needs: the factor that brings it to the
network's training FOV width, the erosion of edges resampled back up, and the FOV outside which predictions are
zeroed. :meth:`~FundusSteps.before` then resamples the photograph (and, for ``standardize_fov``, fills its
outside and gives the normaliser of its inside), and :meth:`~FundusSteps.after` brings the probabilities back to
the photograph. The window pass between them knows nothing of fundus photographs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from medseg.fundus.appearance import fill_outside_fov
from medseg.fundus.fov import find_fov, fov_width
from medseg.fundus.scale import RESAMPLED_VESSEL_WIDENING, erode, fundus_scale, resample, upsampled_edge_radius

__all__ = ["FundusSettings", "FundusSteps"]

logger = logging.getLogger(__name__)

Normalization = str | Callable[[torch.Tensor], torch.Tensor]


class FundusSettings(Protocol):
    """The inference settings the fundus steps read (``medseg.inference.InferenceSettings`` has them all)."""

    fundus: bool  # a fundus model: the bundle's metadata says so, or --fundus-width
    scale: str | float  # "auto" (to training_fov_width), "none", or a resampling factor
    training_fov_width: float | None  # the median FOV width of the training photographs, in pixels
    upsampled_edge_erosion: bool  # erode the edges of probabilities resampled up from a shrunk photograph
    normalization: str | None  # "standardize_fov" standardises with the statistics inside the FOV
    activation: str | None  # erosion applies to sigmoid probabilities only
    resampled_vessel_widening: float | None  # the weights' own, else RESAMPLED_VESSEL_WIDENING


@dataclass(frozen=True)
class FundusSteps:
    """What happens to one (C, H, W) photograph before and after the window pass.

    Attributes:
        size: the photograph's (H, W).
        factor: resampling factor to the network's scale (1: none).
        fov: (H, W) bool mask outside which probabilities are zeroed, or ``None``.
        erosion_radius: photograph pixels by which edges resampled back up are eroded (0: none).
        statistics_fov: (H, W) bool mask whose pixels standardise the image (``standardize_fov``), or ``None``.
    """

    size: tuple[int, int]
    factor: float = 1.0
    fov: np.ndarray | None = None
    erosion_radius: float = 0.0
    statistics_fov: np.ndarray | None = None

    @classmethod
    def plan(
        cls, image: torch.Tensor, settings: FundusSettings, fov: np.ndarray | None, name: str = "image"
    ) -> FundusSteps:
        """The steps for the (C, H, W) ``image`` named ``name``, whose FOV is ``fov`` (given or estimated; ``None``
        where there is none, or none was found). A fundus model with ``scale="auto"`` measures the FOV's width
        (estimating it if ``fov`` is ``None``); a photograph with no disc to measure keeps its scale, and the log
        says so."""
        size = (int(image.shape[1]), int(image.shape[2]))
        measured = fov if fov is not None else _disc_of(image) if _needs_disc(settings) else None
        factor = _scale_factor(settings, measured)
        radius = _erosion_radius(settings, factor)
        if radius and settings.activation != "sigmoid":
            raise ValueError(f"upsampled_edge_erosion erodes sigmoid probabilities, not {settings.activation} outputs")
        statistics_fov = None
        if settings.normalization == "standardize_fov":
            statistics_fov = measured if measured is not None else np.ones(size, dtype=bool)
        if settings.fundus:
            width = fov_width(measured) if measured is not None else None
            found = f"FOV {width:.0f} pixels wide" if width else "no disc found: every pixel predicted"
            hint = ", give --scale FACTOR to resample it" if width is None and settings.scale == "auto" else ""
            logger.info("%s: scale %.4g (%s%s)%s", name, factor, found, hint,
                        f", edges eroded by {radius:.3g} pixels" if radius else "")
        return cls(size, factor, fov, radius, statistics_fov)

    def eroding_as(self, settings: FundusSettings) -> FundusSteps:
        """These steps with the erosion ``settings`` call for at this photograph's factor (another widening, or the
        erosion on or off): a window pass predicted once gives the map of each through :meth:`after`."""
        return replace(self, erosion_radius=_erosion_radius(settings, self.factor))

    def before(self, image: torch.Tensor, normalization: Normalization) -> tuple[torch.Tensor, Normalization]:
        """The (C, H, W) photograph at the network's scale (float32 when resampled, else as stored), and the
        normalisation to give the window pass (a callable for ``standardize_fov``, else ``normalization``)."""
        if self.factor != 1.0:
            image = resample(image.to(torch.float32), [round(side * self.factor) for side in self.size])
        if self.statistics_fov is None:
            return image, normalization
        inside = torch.as_tensor(np.asarray(self.statistics_fov, dtype=bool))
        if tuple(inside.shape) != tuple(image.shape[1:]):
            inside = F.interpolate(inside[None, None].float(), size=image.shape[1:], mode="nearest")[0, 0] > 0.5
        return fill_outside_fov(image, inside)

    def after(self, probs: torch.Tensor) -> torch.Tensor:
        """(K, H', W') probabilities of :meth:`before`'s image as (K, H, W) probabilities of the photograph, in
        the same dtype: resampled back, their edges eroded, zero outside the FOV."""
        if self.factor != 1.0:
            dtype = probs.dtype
            probs = resample(probs, self.size)
            if self.erosion_radius:
                probs = erode(probs, self.erosion_radius)
            probs = probs.to(dtype)
        if self.fov is not None:
            probs[:, ~torch.as_tensor(np.asarray(self.fov, dtype=bool))] = 0
        return probs


def _erosion_radius(settings: FundusSettings, factor: float) -> float:
    """Photograph pixels by which edges resampled up by ``1 / factor`` are eroded (0: none)."""
    if not (settings.fundus and settings.upsampled_edge_erosion):
        return 0.0
    widening = settings.resampled_vessel_widening
    return upsampled_edge_radius(factor, RESAMPLED_VESSEL_WIDENING if widening is None else widening)


def _needs_disc(settings: FundusSettings) -> bool:
    return settings.normalization == "standardize_fov" or (settings.fundus and settings.scale == "auto")


def _disc_of(image: torch.Tensor) -> np.ndarray | None:
    """:func:`find_fov` of a channel-first (C, H, W) image."""
    return find_fov(image.movedim(0, -1).numpy() if image.shape[0] > 1 else image[0].numpy())


def _scale_factor(settings: FundusSettings, fov: np.ndarray | None) -> float:
    """The resampling factor of a photograph with FOV ``fov`` (``None``: no disc found)."""
    if not settings.fundus or settings.scale == "none":
        return 1.0
    if settings.scale != "auto":
        return float(settings.scale)
    if settings.training_fov_width is None:
        raise ValueError("scale 'auto' needs the training FOV width (a fundus bundle's metadata, or --fundus-width)")
    if fov is None:  # nothing to measure: the photograph keeps its scale (plan's log line says so)
        return 1.0
    return fundus_scale(fov, settings.training_fov_width)
