"""Reading inputs and writing predictions for inference: 2D images (PIL) and 3D NIfTI volumes (nibabel).

Images are read channel-first in their stored dtype (a photograph stays uint8). Outputs keep the input's
geometry: a 2D mask has the image's height and width; a NIfTI output has the input's shape, affine and
header. Every file is written to a temporary name beside its destination and renamed into place, so an
interrupted run never leaves a half-written output. A file that cannot be read raises
:class:`medseg.data.DatasetError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from medseg.data import DatasetError, read_photograph
from medseg.data.files import require_finite
from medseg.utils import atomic_path, full_suffix

__all__ = [
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "ImageMeta",
    "is_supported",
    "output_paths",
    "read_image",
    "write_mask",
    "write_overlay",
    "write_probabilities",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif", ".ppm")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ProbabilityDtype = Literal["uint16", "uint8", "float16"]
# what --save-prob writes when no dtype is named: 16 bits keep every probability to 1 / 65535, so metrics read
# back from the files equal those of the probabilities in memory (8 bits tie every pixel under 1/255)
DEFAULT_PROBABILITY_DTYPE: ProbabilityDtype = "uint16"

# PIL modes whose pixels are colour, converted to RGB; every other 8-bit mode is converted to grey ("L").
# Modes with more than 8 bits ("I;16", "I", "F") keep their values as one grey channel.
_OVERLAY_COLOUR = np.array([0, 255, 0], dtype=np.float32)
_OVERLAY_OPACITY = 0.5
# zlib level of the photograph-sized PNGs (overlays, probabilities): on a 3504 x 2336 overlay, 3x faster to write
# than PIL's default 6 for a file a quarter larger; masks, small and quick at any level, keep the default
_PNG_COMPRESSION = 1


@dataclass(frozen=True)
class ImageMeta:
    """Where an image came from and what its outputs must keep.

    ``nifti`` is the input's NIfTI image (for its affine and header) or ``None`` for a 2D image; ``alpha`` is a 2D
    image's (H, W) alpha channel where its file has one (in many fundus exports the alpha is the FOV).
    """

    path: Path
    nifti: nib.Nifti1Image | nib.Nifti2Image | None = None
    alpha: np.ndarray | None = None

    @property
    def is_volume(self) -> bool:
        return self.nifti is not None


def is_supported(path: Path) -> bool:
    return full_suffix(path) in IMAGE_SUFFIXES + NIFTI_SUFFIXES


def read_image(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a 2D image as (C, H, W) (C = 1 grey, 3 colour) or a NIfTI volume as (C, X, Y, Z).

    A 4D NIfTI's last axis is its channels. Unsupported suffixes, unreadable, corrupt or truncated files and
    NaN or infinite values raise :class:`DatasetError` naming the file.
    """
    path = Path(path)
    suffix = full_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path)
    if suffix in IMAGE_SUFFIXES:
        pixels, alpha = read_photograph(path)
        if min(pixels.shape[:2]) < 2:  # no neighbourhood for any kernel: nothing a segmentation can tell
            raise DatasetError(f"{path}: {pixels.shape[0]} x {pixels.shape[1]} pixels, too small to segment")
        return (pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)), ImageMeta(path, alpha=alpha)
    raise DatasetError(
        f"{path}: unsupported file type {suffix or '(no suffix)'!r}; expected one of "
        f"{', '.join(IMAGE_SUFFIXES + NIFTI_SUFFIXES)}"
    )


def _read_nifti(path: Path) -> tuple[np.ndarray, ImageMeta]:
    try:
        volume = nib.load(path)
        # asanyarray keeps the stored dtype (int16 CT stays int16) unless the header scales the values
        data = np.asanyarray(volume.dataobj)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise DatasetError(f"{path}: corrupt or unreadable NIfTI ({type(err).__name__}: {err})") from None
    require_finite(data, path)
    if data.ndim == 3:
        return data[None], ImageMeta(path, volume)
    if data.ndim == 4:
        return np.moveaxis(data, -1, 0), ImageMeta(path, volume)
    raise DatasetError(f"{path}: expected a 3D or 4D NIfTI volume, got shape {data.shape}")


def output_paths(input_path: Path, output_dir: Path, probability_dtype: ProbabilityDtype | None) -> dict[str, Path]:
    """Where the outputs of ``input_path`` go: ``mask``, and ``probabilities``/``overlay`` where written.

    ``NAME.tif`` gives ``NAME_mask.png``, ``NAME_prob.png`` (uint16, uint8) or ``NAME_prob.npy`` (float16) and
    ``NAME_overlay.png``; ``NAME.nii.gz`` gives ``NAME_mask.nii.gz`` and ``NAME_prob.nii.gz``.
    """
    suffix = full_suffix(input_path)
    stem = input_path.name[: len(input_path.name) - len(suffix)]
    if suffix in NIFTI_SUFFIXES:
        paths = {"mask": output_dir / f"{stem}_mask{suffix}"}
        if probability_dtype:
            paths["probabilities"] = output_dir / f"{stem}_prob{suffix}"
        return paths
    paths = {"mask": output_dir / f"{stem}_mask.png", "overlay": output_dir / f"{stem}_overlay.png"}
    if probability_dtype:
        png = probability_dtype in ("uint16", "uint8")
        paths["probabilities"] = output_dir / f"{stem}_prob{'.png' if png else '.npy'}"
    return paths


def write_mask(path: Path, mask: np.ndarray, meta: ImageMeta) -> None:
    """Write a uint8 label map, (H, W) for a 2D input (PNG) or (X, Y, Z) for a NIfTI input."""
    if meta.is_volume:
        with atomic_path(path) as temporary:
            nib.save(_like_input(mask, meta, np.uint8), temporary)
    else:
        with atomic_path(path) as temporary:
            Image.fromarray(mask).save(temporary, format="PNG")


def write_probabilities(path: Path, probabilities: torch.Tensor, meta: ImageMeta, dtype: ProbabilityDtype) -> None:
    """Write (K, *spatial) probabilities in [0, 1].

    2D: one channel as a 16-bit (probability x 65535) or 8-bit (x 255) PNG, otherwise a (K, H, W) ``.npy`` in
    ``dtype``. NIfTI: uint16 or uint8 with the header's scale slope mapping back to [0, 1], or float32 for
    ``"float16"`` (NIfTI-1 has no float16 type); several channels go on a 4th axis.
    """
    if meta.is_volume:
        values = probabilities.float().numpy()
        values = values[0] if values.shape[0] == 1 else np.moveaxis(values, 0, -1)
        stored = {"uint8": np.uint8, "uint16": np.uint16}.get(dtype, np.float32)
        with atomic_path(path) as temporary:
            nib.save(_like_input(values, meta, stored), temporary)
    elif path.suffix == ".png":
        levels = 65535 if dtype == "uint16" else 255
        quantised = (probabilities[0].float().clamp(0, 1) * levels).round().numpy()
        quantised = quantised.astype(np.uint16 if dtype == "uint16" else np.uint8)
        with atomic_path(path) as temporary:
            Image.fromarray(quantised).save(temporary, format="PNG", compress_level=_PNG_COMPRESSION)
    else:
        values = probabilities.to(torch.float16 if dtype == "float16" else torch.float32).numpy()
        with atomic_path(path) as temporary:
            np.save(temporary, values)


def write_overlay(path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    """PNG of a (C, H, W) image (grey shown as grey, intensities min-max scaled) with the (H, W) mask in green."""
    display = image if image.dtype == np.uint8 else _to_uint8(torch.as_tensor(image, dtype=torch.float32), True)
    overlay = np.repeat(display, 3, axis=0) if display.shape[0] == 1 else display[:3]
    overlay = np.ascontiguousarray(overlay.transpose(1, 2, 0))  # uint8 copy: a float one of 8192 x 8192 is 768 MB
    inside = mask > 0
    blended = (1 - _OVERLAY_OPACITY) * overlay[inside] + _OVERLAY_OPACITY * _OVERLAY_COLOUR
    overlay[inside] = blended.round().astype(np.uint8)
    with atomic_path(path) as temporary:
        Image.fromarray(overlay).save(temporary, format="PNG", compress_level=_PNG_COMPRESSION)


def _to_uint8(values: torch.Tensor, rescale: bool = False) -> np.ndarray:
    if rescale:
        low, high = values.min(), values.max()
        values = (values - low) / (high - low) if high > low else values - low
    return (values.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _like_input(data: np.ndarray, meta: ImageMeta, dtype: type) -> nib.Nifti1Image | nib.Nifti2Image:
    """A NIfTI image of ``data`` with the input's affine and header, stored as ``dtype``.

    Float data stored as uint8 gets a scale slope from nibabel so that it reads back as floats.
    """
    header = meta.nifti.header.copy()
    header.set_slope_inter(None, None)  # the input's intensity scaling does not apply to a prediction
    image = type(meta.nifti)(data, meta.nifti.affine, header=header)
    image.set_data_dtype(dtype)
    return image
