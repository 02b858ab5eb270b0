"""How wide predicted vessels come out against their labels, read along the labels' centre lines.

F1 mixes a vessel's width with whether it is found at all; a width check needs the vessels every compared mask
finds, and their widths alone. MONAI's surface distances measure boundaries, not widths along a centre line.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

__all__ = ["vessel_width_sums"]

_AXIAL = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
_DIAGONAL = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]])


def vessel_width_sums(masks: list[np.ndarray], label: np.ndarray, inside: np.ndarray, reach: float) -> np.ndarray:
    """The areas and the centre line length that give widths: ``[label area, each mask's area, length]``.

    The label's centre line points in ``inside`` that every mask detects are the vessels measured; each pixel of
    ``inside`` within the label's local half width plus ``reach`` of its nearest such point counts to it. A width
    is an area over the length (pixels), so sums over several photographs pool their widths; a mask's width
    minus the label's is its error.

    Args:
        masks: (H, W) bool predictions to compare, e.g. one probability map at several erosions.
        label: (H, W) bool vessel label.
        inside: (H, W) bool region measured (the FOV, kept off its rim where an erosion reads outside it).
        reach: pixels beyond the label's edge a mask's wider vessel is still counted in (more than any error
            expected).

    Returns:
        float array of ``len(masks) + 2`` values.
    """
    centre = skeletonize(label) & inside
    detected = centre & np.logical_and.reduce(masks)
    distance, (rows, cols) = ndimage.distance_transform_edt(~centre, return_indices=True)
    half_width = ndimage.distance_transform_edt(label)[rows, cols]
    counted = detected[rows, cols] & (distance <= half_width + reach) & inside
    # a centre line pixel's share of length: half of each step to a neighbour, diagonal steps sqrt(2) long
    axial = ndimage.convolve(centre.astype(np.int32), _AXIAL, mode="constant")
    diagonal = ndimage.convolve(centre.astype(np.int32), _DIAGONAL, mode="constant")
    length = float(((axial + math.sqrt(2) * diagonal) / 2)[detected].sum())
    return np.array([(label & counted).sum(), *((mask & counted).sum() for mask in masks), length], dtype=float)
