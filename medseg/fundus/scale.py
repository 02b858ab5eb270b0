"""The scale of a fundus photograph: the factor to its network's training FOV width, resampling, the one label
convention, and the erosion of vessel edges resampled up from a shrunk photograph.

A network sees vessels at the pixel size of its training photographs (DRIVE: a 540-pixel-wide disc). Another
camera's photograph is brought to that width and the probabilities are resampled back.

**The label convention** is DRIVE's: a pixel is vessel when a vessel touches it, at the grid of that label. A
vessel ``t`` pixels wide is then ``t + 1`` label pixels wide on average: its edges lie half a pixel inside the
label's edge pixels, at their centres. :func:`resample_vessel_label` keeps the convention when a label of any
source (DRIVE, LES-AV, a user's folder) is brought to another grid: the vessel is taken to end at the centres of
its edge pixels, and a pixel of the new grid is vessel when that vessel touches it.

**The erosion follows from it.** A network trained under the convention at factor ``f`` of a photograph marks
edges half of its own pixel, ``1 / (2 f)`` photograph pixels, outside the vessel; resampled back, they lie
``(1 / f - 1) / 2`` pixels outside the half-pixel margin of labels drawn at the photograph's own grid. A shrunk
photograph is also softer than the photographs a network trained on, and networks read lost sharpness as width
(bench/results/width_residual.md): on a resampled photograph they mark vessels a widening of their own pixels
wider still, measured per weights where they were fine-tuned on such photographs (``medseg.engines.width``), else
:data:`RESAMPLED_VESSEL_WIDENING`. :func:`upsampled_edge_radius` is the sum, and :func:`erode` moves each edge
inward by it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medseg.fundus.fov import fov_width

__all__ = [
    "AUTO_SCALE_TOLERANCE", "RESAMPLED_VESSEL_WIDENING", "erode", "fundus_scale", "resample", "resample_vessel_label",
    "upsampled_edge_radius",
]

# A fundus photograph whose FOV is within 10% of the training width is left at its own scale: resampling it
# would blur vessels for no gain (DRIVE's own FOV widths are 535-541 pixels against a median of 540).
AUTO_SCALE_TOLERANCE = 0.1

# How much wider (network pixels, both edges together) a network marks a vessel on a resampled photograph than its
# label convention says, for weights with no widening of their own (a bundle shipped from fine-tuned weights has
# one: medseg.engines.width): chosen by bench/vessel_width.py on validation photographs (DRIVE's enlarged by 1/0.15
# to 1/0.8, LES-AV training at its own size), the widening whose mean width error in network pixels over them is
# least (bench/results/vessel_width.md).
RESAMPLED_VESSEL_WIDENING = 0.45

# The erosion samples its disc's circle in this many directions: an edge between two of them moves by at least
# cos(22.5 degrees) = 0.92 of the radius.
_EROSION_DIRECTIONS = 8
# ... and works through the map in strips of this many rows: besides its padded copy and its result, it holds
# temporaries of one strip only.
_EROSION_ROWS = 1024


def fundus_scale(fov_mask: np.ndarray, training_fov_width: float, tolerance: float = AUTO_SCALE_TOLERANCE) -> float:
    """Resampling factor that brings a fundus photograph to its network's training scale.

    Args:
        fov_mask: (H, W) bool FOV of the photograph.
        training_fov_width: median FOV width, in pixels, of the network's training images.
        tolerance: factors within ``1 ± tolerance`` return exactly 1 (no resampling).
    """
    width = fov_width(fov_mask)
    if width == 0:
        raise ValueError("the FOV mask is empty, so the image's scale cannot be measured")
    factor = training_fov_width / width
    return 1.0 if abs(factor - 1.0) <= tolerance else factor


def resample(image: torch.Tensor, size: list[int] | tuple[int, ...]) -> torch.Tensor:
    """A float32 (C, *spatial) copy of ``image`` at ``size``: bilinear (trilinear in 3D), anti-aliased when a 2D
    image shrinks."""
    linear = "bilinear" if len(size) == 2 else "trilinear"
    shrinking = any(new < old for new, old in zip(size, image.shape[1:]))
    antialias = shrinking and len(size) == 2
    return F.interpolate(image[None].float(), size=list(size), mode=linear, align_corners=False,
                         antialias=antialias)[0]


def resample_vessel_label(label: torch.Tensor, size: list[int] | tuple[int, int]) -> torch.Tensor:
    """A binary (C, H, W) vessel label on a (C, *size) grid under the label convention (module docstring).

    The labelled vessel is taken to be the set where the bilinear interpolation of the label (between pixel
    centres) is 1, which ends at the centres of its edge pixels; a pixel of the new grid is vessel when that set
    touches it. Shrinking, this is "the centre of a vessel pixel lies in it"; at the label's own size, the label.
    Plain bilinear resampling thresholded at 0.5 would instead keep the label's width ``(t + 1)`` in proportion,
    which is ``(t + 1) f`` where the convention asks ``t f + 1`` pixels.

    Returns:
        a float32 {0, 1} (C, *size) tensor.
    """
    rows, row_groups = _box_samples(label.shape[-2], size[0])
    cols, col_groups = _box_samples(label.shape[-1], size[1])
    values = _interpolate_axis(_interpolate_axis(label.to(torch.float64), rows, -2), cols, -1)
    inside = (values >= 1 - 1e-6).numpy()
    touched = np.logical_or.reduceat(np.logical_or.reduceat(inside, row_groups, axis=-2), col_groups, axis=-1)
    return torch.from_numpy(touched).to(torch.float32)


def _box_samples(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis, for every pixel of the target grid in turn: coordinates on the source grid (pixel ``j``
    spans ``[j, j + 1)``) at which a piecewise-linear profile takes its greatest values inside that pixel's box
    ``[a, b)``: ``a``, every source pixel centre in the box, and just before ``b``; and where each box's
    coordinates start."""
    step = source / target
    starts = np.arange(target) * step
    coordinates, groups = [], []
    for start in starts:
        centres = np.arange(math.ceil(start - 0.5), math.ceil(start + step - 0.5)) + 0.5
        groups.append(len(coordinates))
        coordinates.extend([start, *centres, start + step - 1e-4])
    return np.asarray(coordinates), np.asarray(groups)


def _interpolate_axis(values: torch.Tensor, coordinates: np.ndarray, axis: int) -> torch.Tensor:
    """``values`` read linearly between pixel centres at ``coordinates`` along ``axis`` (edges replicated)."""
    position = np.clip(coordinates - 0.5, 0, values.shape[axis] - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, values.shape[axis] - 1)
    weight = torch.as_tensor(position - low, dtype=values.dtype)
    shape = [1] * values.dim()
    shape[axis] = -1
    below = values.index_select(axis, torch.as_tensor(low))
    above = values.index_select(axis, torch.as_tensor(high))
    return below + weight.view(shape) * (above - below)


def upsampled_edge_radius(factor: float, widening: float = RESAMPLED_VESSEL_WIDENING) -> float:
    """How far (photograph pixels) the edges of probabilities predicted at ``factor`` times the photograph's size
    and resampled back lie outside labels drawn at the photograph's size under the label convention, for a network
    that marks vessels ``widening`` of its pixels wider on a resampled photograph: ``((1 + widening) / f - 1) / 2``,
    0 for ``f >= 1`` (a photograph left at its own scale)."""
    return ((1.0 + widening) / factor - 1.0) / 2 if factor < 1.0 else 0.0


def erode(probs: torch.Tensor, radius: float) -> torch.Tensor:
    """Grey-scale erosion of a smooth (C, H, W) probability map by a disc of ``radius`` pixels (any real > 0).

    Each pixel takes the least of its own value and the values at ``radius`` from it in 8 directions, read
    bilinearly (the border replicated). Where the map falls steadily across the disc, as it does across a vessel's
    edge on a map resampled from a coarser grid, the least value over the disc lies on its circle, so each edge
    moves inward by the radius (by at least 0.92 of it between two of the directions); no value rises.

    Returns:
        a new float32 (C, H, W) tensor.
    """
    if not radius > 0:
        raise ValueError(f"the erosion radius must be positive, got {radius}")
    probs = probs.to(torch.float32)
    height, width = probs.shape[-2:]
    reach = math.ceil(radius) + 1
    padded = F.pad(probs[None], [reach] * 4, mode="replicate")[0]
    eroded = probs.clone()
    for angle in (2 * math.pi * k / _EROSION_DIRECTIONS for k in range(_EROSION_DIRECTIONS)):
        # snapped: the axis directions read one row (or column) of neighbours, not a bilinear blend with weight ~1e-16
        dy, dx = round(radius * math.sin(angle), 9), round(radius * math.cos(angle), 9)
        top, left = math.floor(dy), math.floor(dx)
        for row in range(0, height, _EROSION_ROWS):
            rows = min(_EROSION_ROWS, height - row)
            window = padded[:, reach + row + top : reach + row + top + rows + 1, reach + left : reach + left + width + 1]
            sample = _bilinear(window, dy - top, dx - left)
            torch.minimum(eroded[:, row : row + rows], sample, out=eroded[:, row : row + rows])
    return eroded


def _bilinear(window: torch.Tensor, wy: float, wx: float) -> torch.Tensor:
    """The (C, H, W) values at offset ``(wy, wx)`` in [0, 1) into a (C, H + 1, W + 1) ``window``, read bilinearly
    (as lerps, skipping an axis whose weight is 0)."""
    columns = window[..., :-1] if wx == 0 else torch.lerp(window[..., :-1], window[..., 1:], wx)
    return columns[:, :-1] if wy == 0 else torch.lerp(columns[:, :-1], columns[:, 1:], wy)
