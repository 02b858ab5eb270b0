"""The appearance of a fundus photograph: contrast equalisation and intensity statistics inside the FOV.

The black surround of a fundus photograph covers 20 to 40 percent of the frame depending on the camera: left in
an image's statistics, it shifts every retina pixel by a camera-dependent amount. So a fundus network is
standardised with the mean and spread of the pixels inside the FOV, at training
(:func:`standardize_inside_fov`) and at inference (:func:`fill_outside_fov`) alike, from one computation
(:func:`fov_statistics`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from skimage.exposure import equalize_adapthist

__all__ = ["equalize_local_contrast", "fill_outside_fov", "fov_statistics", "standardize_inside_fov"]

# Statistics are summed over chunks of about this many elements, so a large uint8 photograph is never converted to
# float64 whole.
_STATISTICS_CHUNK = 1 << 22


def equalize_local_contrast(channel: np.ndarray) -> np.ndarray:
    """CLAHE (scikit-image's ``equalize_adapthist`` with its defaults: tiles an eighth of the image's sides, clip
    limit 0.01) of one (H, W) channel in [0, 1]: float64 (H, W) in [0, 1].

    The tiles are a fixed fraction of the image, so a photograph is equalised over the same share of its field
    whatever its resolution: training (DRIVE's own size) and file inference (any camera's) call this alike.
    """
    return equalize_adapthist(np.clip(channel, 0.0, 1.0))


def fov_statistics(image: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, the mean and the unbiased spread (at least 1e-6) of the (C, H, W) ``image``'s pixels where the
    (H, W) bool ``inside`` is True: two float64 (C,) tensors, summed in row chunks of float64."""
    if not bool(inside.any()):
        raise ValueError("the FOV mask is empty, so its pixels have no statistics")
    channels = image.shape[0]
    count, total, squares = 0, torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    rows = max(1, _STATISTICS_CHUNK // max(1, image[0, 0].numel() * channels))
    for chunk, chunk_inside in zip(image.split(rows, dim=1), inside.split(rows, dim=0)):
        values = chunk[:, chunk_inside].to(torch.float64)
        count, total, squares = count + values.shape[1], total + values.sum(1), squares + values.square().sum(1)
    mean = total / count
    spread = ((squares - count * mean**2).clamp(min=0) / max(count - 1, 1)).sqrt().clamp(min=1e-6)
    return mean, spread


def standardize_inside_fov(image: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """The float (C, H, W) ``image`` standardised per channel by :func:`fov_statistics`, 0 outside ``inside``
    (H, W): what a fundus network is trained on."""
    mean, spread = (value.to(image.dtype)[:, None, None] for value in fov_statistics(image, inside))
    return (image - mean) / spread * inside.to(image.dtype)


def fill_outside_fov(
    image: torch.Tensor, inside: torch.Tensor
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """For inference on a (C, H, W) ``image`` in its stored dtype: a copy whose pixels outside ``inside`` (H, W)
    hold their channel's mean inside (rounded for integer images), and the normaliser ``(x - mean) / spread`` of
    the pixels inside, applied later to float windows (N, C, H, W): the outside then comes out (about) 0, as
    :func:`standardize_inside_fov` makes it at training, without a float copy of the whole photograph."""
    mean, spread = fov_statistics(image, inside)
    fill = mean.round() if not image.is_floating_point() else mean
    filled = image.clone()
    filled[:, ~inside] = fill[:, None].to(image.dtype)
    shift, divisor = mean.float().reshape(-1, 1, 1), spread.float().reshape(-1, 1, 1)
    return filled, lambda windows: (windows - shift.to(windows.device)) / divisor.to(windows.device)
