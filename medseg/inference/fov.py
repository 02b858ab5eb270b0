"""Field-of-view (FOV) of colour fundus photographs: an automatic estimate and its width.

Fundus cameras record the retina as a bright disc on a dark background. Predictions outside that disc are
noise, and the disc's width tells the image's scale (the training images of a DRIVE model show a 540-pixel-wide
disc), so inference uses both when a photograph comes without its own FOV mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import filters, measure, morphology, transform

__all__ = ["estimate_fov", "fov_width"]

# The estimate runs on a thumbnail: the disc's outline needs no more detail, and morphology on a
# 8192 x 8192 photograph would take longer than the network.
_THUMBNAIL_SIDE = 512


def estimate_fov(image: np.ndarray) -> np.ndarray:
    """Estimate the FOV of a fundus photograph.

    Args:
        image: (H, W, 3) RGB or (H, W) grey, any integer or float dtype.

    Returns:
        (H, W) bool mask, True inside the FOV: the largest bright component (Otsu threshold on the red channel,
        the brightest in fundus images, or on the grey values), opened to drop speckle, with its holes filled.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"estimate_fov expects an (H, W) or (H, W, C) image, got shape {image.shape}")
    brightness = image[..., 0] if image.ndim == 3 else image
    height, width = brightness.shape
    step = max(1, int(np.ceil(max(height, width) / _THUMBNAIL_SIDE)))
    thumbnail = np.asarray(brightness[::step, ::step], dtype=np.float32)
    if thumbnail.max() == thumbnail.min():  # a flat image has no disc to find: keep everything
        return np.ones((height, width), dtype=bool)
    bright = thumbnail > filters.threshold_otsu(thumbnail)
    bright = morphology.opening(bright, morphology.disk(2))
    components = measure.label(bright)
    if components.max() == 0:
        return np.ones((height, width), dtype=bool)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    disc = ndimage.binary_fill_holes(components == largest)
    if step == 1:
        return disc
    return transform.resize(disc, (height, width), order=0, preserve_range=True, anti_aliasing=False).astype(bool)


def fov_width(mask: np.ndarray) -> float:
    """Width in pixels of a FOV mask: the horizontal extent of its True pixels (0 for an empty mask)."""
    columns = np.flatnonzero(np.asarray(mask).any(axis=0))
    return float(columns[-1] - columns[0] + 1) if columns.size else 0.0
