"""File-level helpers shared by the dataset readers: folder checks and strict image decoding.

:func:`as_stored_image` is the one rule by which a 2D image file becomes pixels, in training (the converter
of MONAI's PIL reader, :func:`medseg.data.pil_reader`), in dataset checks and in inference
(:func:`medseg.inference.read_image`): colour as RGB, 16-bit and float grey as stored, any other grey as 8-bit.

Every failure is raised as :class:`medseg.data.DatasetError` naming the offending path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

T = TypeVar("T")


# PIL modes decoded as RGB, and grey modes kept at their own depth; every other mode becomes 8-bit grey ("L")
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"})
WIDE_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I", "F"})


class DatasetError(ValueError):
    """A dataset file or folder is missing or invalid; the message names the path and the problem."""


def require_folder(folder: Path, pattern: str) -> list[Path]:
    """Return the files in ``folder`` matching ``pattern`` (sorted), or raise if the folder is missing or has none."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing folder")
    files = sorted(folder.glob(pattern))
    if not files:
        raise DatasetError(f"{folder}: empty folder (no files matching {pattern!r})")
    return files


def as_stored_image(image: Image.Image) -> Image.Image:
    """``image`` in the mode medseg reads every photograph in: colour modes (palette included) as RGB, 16-bit and
    float grey as they are, other grey modes (1-bit, LA) as 8-bit grey."""
    if image.mode in COLOUR_MODES:
        return image if image.mode == "RGB" else image.convert("RGB")
    if image.mode in WIDE_GREY_MODES or image.mode == "L":
        return image
    return image.convert("L")


def read_pixels(path: Path, mode: str | None = None) -> np.ndarray:
    """Decode every pixel of an image file into an array of shape (H, W) or (H, W, C).

    ``mode`` converts with PIL first (``"RGB"``, ``"L"``), ``"image"`` by :func:`as_stored_image`; ``None`` keeps
    the stored values, which for palette images are the raw palette indices (label maps). Unreadable, corrupt or
    truncated files, and float pixels that are NaN or infinite, raise :class:`DatasetError` naming the file.
    """

    def convert(image: Image.Image) -> np.ndarray:
        if mode == "image":
            return np.array(as_stored_image(image))
        return np.array(image if mode is None or image.mode == mode else image.convert(mode))

    return require_finite(_decoded(path, convert), path)


def read_photograph(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The pixels of an image file as :func:`read_pixels` with ``mode="image"`` gives them, (H, W[, 3]), and its
    alpha channel (H, W) where the file has one (RGBA, LA, PA), else ``None``; refused as :func:`read_pixels`
    refuses a file."""

    def split(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
        alpha = np.array(image.getchannel("A")) if "A" in image.getbands() else None
        return np.array(as_stored_image(image)), alpha

    pixels, alpha = _decoded(path, split)
    return require_finite(pixels, path), alpha


def _decoded(path: Path, convert: Callable[[Image.Image], T]) -> T:
    """``convert`` of the fully decoded image at ``path``; unreadable, corrupt or truncated files raise
    :class:`DatasetError` naming the file."""
    try:
        # PIL warns of damaged metadata (EXIF) as it reads; the file's own error, or none, is what is reported
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            with Image.open(path) as image:
                image.load()  # decodes all pixel data, so truncation is detected here rather than later
                return convert(image)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except UnidentifiedImageError:  # its message repeats the path
        raise DatasetError(f"{path}: corrupt or unreadable image (not a recognised image format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: corrupt or unreadable image ({err})") from None


def require_finite(values: np.ndarray, path: Path) -> np.ndarray:
    """``values`` (any shape) as they are, unless a float value is NaN or infinite: no normalisation or network
    gives a meaningful answer from one, so the file is refused by name (:class:`DatasetError`)."""
    if np.issubdtype(values.dtype, np.floating):
        bad = np.count_nonzero(~np.isfinite(values))
        if bad:
            raise DatasetError(f"{path}: {bad} NaN or infinite value(s) of {values.size}")
    return values


def check_all(check: Callable[..., T], jobs: Sequence[tuple], dataset: str) -> list[T]:
    """Run ``check(*job)`` for every job on a thread pool (PIL releases the GIL while decoding).

    Every DatasetError is collected, so one bad file does not hide the others; one is raised as it is, several
    together as one DatasetError with one line per file. Otherwise the results are returned in job order.
    """

    def attempt(job: tuple) -> T | DatasetError:
        try:
            return check(*job)
        except DatasetError as err:
            return err

    with ThreadPoolExecutor() as pool:
        outcomes = list(pool.map(attempt, jobs))
    errors = [str(outcome) for outcome in outcomes if isinstance(outcome, DatasetError)]
    if len(errors) == 1:  # the one line names the file and the problem
        raise DatasetError(errors[0])
    if errors:
        raise DatasetError(f"{len(errors)} invalid file(s) in {dataset}:\n" + "\n".join(errors))
    return outcomes
