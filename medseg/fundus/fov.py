"""Field-of-view (FOV) of colour fundus photographs: an automatic estimate and its width.

Fundus cameras record the retina as a bright disc on a dark background. Predictions outside that disc are
noise, and the disc's width tells the image's scale (the training images of a DRIVE model show a 540-pixel-wide
disc), so inference uses both when a photograph comes without its own FOV mask.

The estimate must never cut into the retina: a cut zeroes real vessels and, through a wrong width, mis-scales
the whole image. So the threshold is set from the dark background's own level, far below the darkest retina of
an unevenly lit fundus (a threshold between "dark" and "bright", such as Otsu's, splits the fundus itself), and
the disc is closed to its convex hull, since a camera's field of view is convex.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage
from skimage import measure, morphology

__all__ = ["estimate_fov", "find_fov", "fov_from_alpha", "fov_width"]

logger = logging.getLogger(__name__)

# The estimate runs on a thumbnail: the disc's outline needs no more detail, and morphology on a
# 8192 x 8192 photograph would take longer than the network.
_THUMBNAIL_SIDE = 640
# A pixel is background when darker than this fraction of the bright retina (the 95th percentile of the image):
# a periphery darkened five times by vignetting stays above it, a camera's black surround stays below.
_DARK_FRACTION = 0.1
# Background noise (sensor, JPEG) is allowed this many robust standard deviations above the background's median.
_NOISE_SIGMAS = 5.0
# A clipped disc's width is fitted to its outline only when this many outline pixels of the thumbnail show.
_MIN_OUTLINE_POINTS = 50
# ... and when its outline lies within this fraction of the radius from the fitted circle, on average.
_MAX_CIRCLE_MISFIT = 0.02
# An image whose dark pixels reaching the frame's border cover less than this fraction has no background.
_MIN_BACKGROUND_FRACTION = 0.005
# An alpha channel is a FOV mask when at least this fraction of its pixels are fully transparent or fully opaque
# (anti-aliasing may soften the disc's outline) and it has pixels of both.
_MASK_LIKE_ALPHA = 0.99


def find_fov(image: np.ndarray) -> np.ndarray | None:
    """The FOV of a fundus photograph, or ``None`` when it shows no dark surround to find the disc by.

    Args:
        image: (H, W, 3) RGB or (H, W) grey, any integer or float dtype.

    Returns:
        (H, W) bool mask, True inside the FOV: on a thumbnail of the brightest channel, the pixels above the
        background's level plus its noise, the largest such component, its holes filled, closed to its convex
        hull and grown by one thumbnail pixel (so the full-resolution outline is never inside the retina).
        ``None`` for an image without a dark background reaching its border (a crop of the retina, a flat image).
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"a FOV estimate needs an (H, W) or (H, W, C) image, got shape {image.shape}")
    height, width = image.shape[:2]
    step = max(1, int(np.ceil(max(height, width) / _THUMBNAIL_SIDE)))
    thumbnail = np.asarray(image[::step, ::step], dtype=np.float32)
    brightness = thumbnail.max(axis=-1) if thumbnail.ndim == 3 else thumbnail
    threshold = _background_threshold(brightness)
    if threshold is None:
        return None
    disc = _largest_component(ndimage.binary_opening(brightness > threshold, iterations=1))
    disc = morphology.convex_hull_image(ndimage.binary_fill_holes(disc))
    disc = ndimage.binary_dilation(disc, iterations=1)
    full = np.repeat(np.repeat(disc, step, axis=0), step, axis=1)[:height, :width]
    return np.ascontiguousarray(full)


def fov_from_alpha(alpha: np.ndarray) -> np.ndarray | None:
    """The FOV an (H, W) alpha channel marks (its opaque half: True where alpha >= half its range), or ``None``
    when the alpha is no mask: fully opaque, or with more than a sliver of partial transparency."""
    alpha = np.asarray(alpha)
    full = np.iinfo(alpha.dtype).max if np.issubdtype(alpha.dtype, np.integer) else 1.0
    opaque, transparent = alpha >= full, alpha <= 0
    if not opaque.any() or not transparent.any() or (opaque | transparent).mean() < _MASK_LIKE_ALPHA:
        return None
    return alpha >= full / 2


def estimate_fov(image: np.ndarray, name: str = "image") -> np.ndarray:
    """:func:`find_fov`, or the whole frame (and a log line naming the image) where no disc is found: (H, W) bool."""
    found = find_fov(image)
    if found is None:
        logger.warning("%s: no dark background around the retina, so the FOV is the whole image", name)
        return np.ones(image.shape[:2], dtype=bool)
    return found


def _background_threshold(brightness: np.ndarray) -> float | None:
    """The brightness above which a thumbnail pixel belongs to the retina, or None when no background shows."""
    bright = float(np.percentile(brightness, 95))
    dark = brightness <= _DARK_FRACTION * bright
    border = np.zeros_like(dark)
    border[[0, -1], :] = border[:, [0, -1]] = True
    labels, _ = ndimage.label(dark)
    touching = np.unique(labels[border & dark])
    background = np.isin(labels, touching[touching > 0])
    if bright <= 0 or background.mean() < _MIN_BACKGROUND_FRACTION:
        return None
    values = brightness[background]
    level = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - level)))
    return min(level + max(_NOISE_SIGMAS * spread, 1e-3 * bright), _DARK_FRACTION * bright)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components = measure.label(mask)
    if components.max() == 0:
        return mask
    return components == np.argmax(np.bincount(components.ravel())[1:]) + 1


def fov_width(mask: np.ndarray) -> float:
    """Width in pixels of an (H, W) FOV mask: the horizontal extent of its True pixels, or, when the disc is
    clipped at the left or right of the frame, the diameter of the circle fitted to its outline inside the frame
    (0 for an empty mask)."""
    mask = np.asarray(mask, dtype=bool)
    columns = np.flatnonzero(mask.any(axis=0))
    if not columns.size:
        return 0.0
    extent = float(columns[-1] - columns[0] + 1)
    if columns[0] > 0 and columns[-1] < mask.shape[1] - 1:
        return extent
    return max(extent, _fitted_diameter(mask))


def _fitted_diameter(mask: np.ndarray) -> float:
    """Diameter of the least-squares circle through the outline of ``mask`` that lies inside the frame (the
    frame's edges are where a camera clipped the disc, not its outline); 0 when too little outline shows."""
    step = max(1, int(np.ceil(max(mask.shape) / _THUMBNAIL_SIDE)))
    thumbnail = mask[::step, ::step]
    outline = thumbnail & ~ndimage.binary_erosion(thumbnail, border_value=1)
    rows, columns = np.nonzero(outline)
    if rows.size < _MIN_OUTLINE_POINTS:
        return 0.0
    y, x = rows * float(step), columns * float(step)
    # the circle x² + y² + d x + e y + f = 0, linear in (d, e, f) (Kåsa's fit)
    (d, e, f), *_ = np.linalg.lstsq(np.stack([x, y, np.ones_like(x)], axis=1), -(x**2 + y**2), rcond=None)
    radius_squared = (d**2 + e**2) / 4 - f
    if radius_squared <= 0:
        return 0.0
    radius = float(np.sqrt(radius_squared))
    # an outline that is no circle's (a band, a rectangle) has no diameter to fit
    if np.abs(np.hypot(x + d / 2, y + e / 2) - radius).mean() > _MAX_CIRCLE_MISFIT * radius:
        return 0.0
    return 2 * radius + step
