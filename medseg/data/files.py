"""File-level helpers shared by the dataset readers: folder checks and strict image decoding.

Every failure is raised as :class:`medseg.data.DatasetError` naming the offending path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

T = TypeVar("T")


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


def read_pixels(path: Path, mode: str | None = None) -> np.ndarray:
    """Decode every pixel of an image file into an array of shape (H, W) or (H, W, C).

    ``mode`` converts with PIL first (``"RGB"``, ``"L"``); ``None`` keeps the stored values, which for palette
    images are the raw palette indices. Unreadable, corrupt or truncated files raise :class:`DatasetError`.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decodes all pixel data, so truncation is detected here rather than later
            if mode is not None and image.mode != mode:
                image = image.convert(mode)
            return np.asarray(image)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except UnidentifiedImageError:  # its message repeats the path
        raise DatasetError(f"{path}: corrupt or unreadable image (not a recognised image format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: corrupt or unreadable image ({err})") from None



def check_all(check: Callable[..., T], jobs: Sequence[tuple], dataset: str) -> list[T]:
    """Run ``check(*job)`` for every job on a thread pool (PIL releases the GIL while decoding).

    Every DatasetError is collected, so one bad file does not hide the others; if any occurred they are raised
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
    if errors:
        raise DatasetError(f"{len(errors)} invalid file(s) in {dataset}:\n" + "\n".join(errors))
    return outcomes
