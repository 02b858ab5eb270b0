"""DRIVE retinal vessel dataset in its official layout: discovery, validation split and full-file validation.

Layout (ids are the leading numbers, e.g. ``21``)::

    <root>/training/images/21_training.tif   1st_manual/21_manual1.gif   mask/21_training_mask.gif
    <root>/test/images/01_test.tif           1st_manual/01_manual1.gif   mask/01_test_mask.gif
                                             2nd_manual/01_manual2.gif   (palette GIF, indices {0, 1})

Labels and masks are binarised as ``greyscale > 127``, which holds for the greyscale {0, 255} files and for the
palette 2nd_manual files (greyscale {3, 253}).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.data.files import DatasetError, check_all, read_pixels, require_folder

SPLITS = ("training", "test")
LABEL_FOLDERS = {"training": ("1st_manual", "mask"), "test": ("1st_manual", "2nd_manual", "mask")}
BINARY_THRESHOLD = 127


def _label_paths(split_dir: Path, split: str, image_id: str) -> dict[str, Path]:
    paths = {
        "label": split_dir / "1st_manual" / f"{image_id}_manual1.gif",
        "mask": split_dir / "mask" / f"{image_id}_{split}_mask.gif",
    }
    if split == "test":
        paths["label2"] = split_dir / "2nd_manual" / f"{image_id}_manual2.gif"
    return paths


def drive_records(root: str | Path, split: str) -> list[dict[str, str]]:
    """List the DRIVE samples of ``split`` ("training" or "test") as MONAI data dicts, sorted by id.

    Each record has "id", "image", "label" (1st_manual) and "mask" paths, plus "label2" (2nd_manual) for test.
    Raises DatasetError for a missing or empty folder, an image without its label or mask, or a label without image.
    Files are not opened here; see :func:`validate_drive`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: missing folder (DRIVE root)")
    split_dir = root / split
    images = require_folder(split_dir / "images", f"*_{split}.tif")
    for folder in LABEL_FOLDERS[split]:
        require_folder(split_dir / folder, "*.gif")
    records = []
    for image in images:
        image_id = image.name.split("_")[0]
        paths = _label_paths(split_dir, split, image_id)
        for key, path in paths.items():
            if not path.is_file():
                raise DatasetError(f"{image}: image without {key} (expected {path})")
        records.append({"id": image_id, "image": str(image), **{k: str(p) for k, p in paths.items()}})
    image_ids = {r["id"] for r in records}
    for label in sorted((split_dir / "1st_manual").glob("*_manual1.gif")):
        if label.name.split("_")[0] not in image_ids:
            expected = split_dir / "images" / f"{label.name.split('_')[0]}_{split}.tif"
            raise DatasetError(f"{label}: label without image (expected {expected})")
    return records


def split_validation(
    records: list[dict], n_val: int | None = None, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Split ``records`` into (train, val) deterministically: same records and seed give the same split.

    ``n_val`` validation records if given, else ``round(val_fraction * len(records))``; at least one record is
    kept on each side. Both lists are returned in id order, independent of the input order.
    """
    ordered = sorted(records, key=lambda r: r["id"])
    if n_val is None:
        n_val = round(val_fraction * len(ordered))
    if not 0 < n_val < len(ordered):
        raise ValueError(f"validation size must be between 1 and {len(ordered) - 1}, got {n_val}")
    val_positions = set(np.random.default_rng(seed).permutation(len(ordered))[:n_val].tolist())
    train = [r for i, r in enumerate(ordered) if i not in val_positions]
    val = [r for i, r in enumerate(ordered) if i in val_positions]
    return train, val


@dataclass(frozen=True)
class DriveImageStats:
    """What :func:`validate_drive` measured on one sample (fractions are of all H*W pixels)."""

    split: str
    id: str
    height: int
    width: int
    label_values: tuple[int, ...]  # greyscale values found in the 1st_manual file
    vessel_fraction: float
    fov_fraction: float
    vessel_fraction_2nd: float | None = None


def read_binary(path: str | Path) -> np.ndarray:
    """Read a DRIVE label or mask as uint8 {0, 1} of shape (H, W); raise DatasetError unless it is binary."""
    return _read_binary(path)[0]


def _read_binary(path: str | Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """The binarised array and the greyscale values it was made from."""
    grey = read_pixels(Path(path), mode="L")
    values = np.unique(grey)
    low, high = values[values <= BINARY_THRESHOLD], values[values > BINARY_THRESHOLD]
    if grey.ndim != 2 or len(low) > 1 or len(high) > 1:
        raise DatasetError(
            f"{path}: not a binary label (greyscale values {values.tolist()[:8]}; expected one value <= 127 "
            "for background and one > 127 for foreground)"
        )
    return (grey > BINARY_THRESHOLD).astype(np.uint8), tuple(values.tolist())


def validate_drive_sample(split: str, record: dict[str, str]) -> DriveImageStats:
    """Open every file of one record and check it (see :func:`validate_drive`); raise DatasetError if invalid."""
    image = read_pixels(Path(record["image"]))
    if image.ndim != 3 or image.shape[2] != 3:
        raise DatasetError(f"{record['image']}: expected an RGB image, got array shape {image.shape}")
    height, width = image.shape[:2]
    binary, values = {}, {}
    for key in ("label", "mask", "label2"):
        if key not in record:
            continue
        binary[key], values[key] = _read_binary(record[key])
        if binary[key].shape != (height, width):
            raise DatasetError(
                f"{record[key]}: size mismatch, {key} is {binary[key].shape[0]}x{binary[key].shape[1]} (HxW) "
                f"but image {record['image']} is {height}x{width}"
            )
    return DriveImageStats(
        split=split,
        id=record["id"],
        height=height,
        width=width,
        label_values=values["label"],
        vessel_fraction=float(binary["label"].mean()),
        fov_fraction=float(binary["mask"].mean()),
        vessel_fraction_2nd=float(binary["label2"].mean()) if "label2" in binary else None,
    )


def validate_drive(root: str | Path, splits: tuple[str, ...] = SPLITS) -> list[DriveImageStats]:
    """Open and check every image, label and mask of a DRIVE folder; return one stats entry per sample.

    Checks: folders exist and are not empty, every image has its labels and mask, every file decodes completely,
    images are RGB, labels and masks are binary and have the image's size. All file problems are collected and
    raised together as one DatasetError (one line per file).
    """
    jobs = [(split, record) for split in splits for record in drive_records(root, split)]
    return check_all(validate_drive_sample, jobs, f"DRIVE folder {root}")
