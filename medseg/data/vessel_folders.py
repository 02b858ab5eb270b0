"""Any labelled vessel dataset as three folders paired by file stem, and LES-AV in its own layout.

A user's photographs come as ``images/NAME.*`` with labels ``labels/NAME.*`` and, when the camera gives them,
FOV masks ``masks/NAME.*`` (or ``NAME_mask.*``). Labels are binary (one value <= 127 for background, one
> 127 for vessel, as DRIVE's) or an index map whose vessel values are named (``label_positive``): LES-AV's
``vessel/`` maps hold 0 background, 1 crossing, 2 vein, 3 artery, 4 uncertain, and every labelled pixel is a
vessel. Layout of LES-AV::

    <root>/training/images/0.png   vessel/0.png   mask/0.png     (ids 0..10; test/ likewise)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from medseg.data.drive import BINARY_THRESHOLD, drive_records, split_validation
from medseg.data.files import DatasetError, check_all, read_pixels, require_folder

__all__ = [
    "LABEL_POSITIVE",
    "LES_AV_LABEL_POSITIVE",
    "LES_AV_SPLITS",
    "VesselImageStats",
    "checked_vessel_records",
    "les_av_records",
    "multi_camera_records",
    "read_vessel_label",
    "validate_les_av",
    "validate_vessel_records",
    "vessel_folder_records",
]

LES_AV_SPLITS = ("training", "test")
LES_AV_LABEL_POSITIVE = (1, 2, 3, 4)
# a record key: the stored label values that are vessel, for an index-map label (medseg.data.vessel_transforms)
LABEL_POSITIVE = "label_positive"
# what a folder of photographs may hold (PIL decodes them all)
_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".gif", ".bmp", ".ppm")


def _by_stem(folder: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(folder.iterdir()) if path.suffix.lower() in _IMAGE_SUFFIXES}


def vessel_folder_records(
    images: str | Path, labels: str | Path, masks: str | Path | None = None
) -> list[dict[str, str]]:
    """Pair ``images/NAME.*`` with ``labels/NAME.*`` (and ``masks/NAME.*`` or ``NAME_mask.*``), sorted by name.

    Each record has "id" (the stem), "image", "label" and, with ``masks``, "mask". Every image without its label
    or mask, and every label without its image, is named in one :class:`DatasetError`; files are not opened here
    (:func:`validate_vessel_records`).
    """
    images, labels = Path(images), Path(labels)
    for folder in (images, labels, *([Path(masks)] if masks is not None else [])):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: missing folder")
    image_files, label_files = _by_stem(images), _by_stem(labels)
    mask_files = _by_stem(Path(masks)) if masks is not None else {}
    if not image_files:
        raise DatasetError(f"{images}: no images ({', '.join(_IMAGE_SUFFIXES)})")
    problems, records = [], []
    for stem, image in image_files.items():
        record = {"id": stem, "image": str(image)}
        if stem not in label_files:
            problems.append(f"{image}: image without label (expected {labels / stem}.*)")
        else:
            record["label"] = str(label_files[stem])
        if masks is not None:
            mask = mask_files.get(stem, mask_files.get(f"{stem}_mask"))
            if mask is None:
                problems.append(f"{image}: image without FOV mask (expected {Path(masks) / stem}.* or {stem}_mask.*)")
            else:
                record["mask"] = str(mask)
        records.append(record)
    problems += [f"{label}: label without image (expected {images / stem}.*)"
                 for stem, label in label_files.items() if stem not in image_files]
    if problems:
        raise DatasetError(f"{len(problems)} unpaired file(s):\n" + "\n".join(problems))
    return records


def read_vessel_label(path: str | Path, positive: Sequence[int] | None = None) -> np.ndarray:
    """(H, W) uint8 {0, 1} vessel map: binary labels as DRIVE's (``positive`` None), or the stored values of an
    index map that are in ``positive``; raises :class:`DatasetError` for anything else."""
    if positive:
        values = read_pixels(Path(path))
        if values.ndim != 2:
            raise DatasetError(f"{path}: an index-map label must have one channel, got array shape {values.shape}")
        return np.isin(values, list(positive)).astype(np.uint8)
    grey = read_pixels(Path(path), mode="L")
    found = np.unique(grey)
    if len(found[found <= BINARY_THRESHOLD]) > 1 or len(found[found > BINARY_THRESHOLD]) > 1:
        raise DatasetError(
            f"{path}: not a binary label (greyscale values {found.tolist()[:8]}); name the vessel values of an "
            "index map with --label-positive"
        )
    return (grey > BINARY_THRESHOLD).astype(np.uint8)


@dataclass(frozen=True)
class VesselImageStats:
    """What :func:`validate_vessel_records` measured on one pair (fractions are of all H*W pixels)."""

    id: str
    height: int
    width: int
    label_values: tuple[int, ...]
    vessel_fraction: float
    fov_fraction: float | None


def _validate_pair(record: dict[str, str], positive: Sequence[int] | None) -> VesselImageStats:
    image = Path(record["image"])
    height, width = read_pixels(image).shape[:2]  # every pixel decodes
    stored = read_pixels(Path(record["label"]))
    label = read_vessel_label(record["label"], positive)
    fov = None
    if "mask" in record:
        fov = read_pixels(Path(record["mask"]), mode="L") > BINARY_THRESHOLD
    for key, shape in (("label", label.shape), ("mask", None if fov is None else fov.shape)):
        if shape is not None and shape != (height, width):
            raise DatasetError(
                f"{record[key]}: size mismatch, {key} is {shape[0]}x{shape[1]} (HxW) but image {image} is "
                f"{height}x{width}"
            )
    return VesselImageStats(
        id=record["id"],
        height=height,
        width=width,
        label_values=tuple(np.unique(stored).tolist()[:8]),
        vessel_fraction=float(label.mean()),
        fov_fraction=None if fov is None else float(fov.mean()),
    )


def validate_vessel_records(
    records: Sequence[dict[str, str]], positive: Sequence[int] | None = None, dataset: str = "vessel folders"
) -> list[VesselImageStats]:
    """Open every image, label and mask of ``records``: all decode, labels are binary (or index maps read with
    ``positive``), sizes match. Every problem is named in one :class:`DatasetError`; else one entry per pair."""
    return check_all(_validate_pair, [(record, positive) for record in records], dataset)


def checked_vessel_records(records: Sequence[dict[str, str]]) -> Sequence[dict[str, str]]:
    """``records`` as they are, once every image, label and mask of them has been opened and checked
    (:func:`validate_vessel_records`, each record with its own ``label_positive``): a bundle's training reads its
    records through this, so a bad file stops it before anything is written, named in one line, rather than
    mid-epoch inside MONAI's loader."""
    check_all(_validate_pair, [(record, record.get(LABEL_POSITIVE)) for record in records], "the training records")
    return records


def les_av_records(root: str | Path, split: str) -> list[dict[str, str]]:
    """The LES-AV samples of ``split`` ("training" or "test"), each {"id", "image", "label" (vessel/),
    "mask"}, sorted by id; read their labels with ``positive=LES_AV_LABEL_POSITIVE``."""
    if split not in LES_AV_SPLITS:
        raise ValueError(f"split must be one of {LES_AV_SPLITS}, got {split!r}")
    split_dir = Path(root) / split
    require_folder(split_dir / "images", "*.png")
    records = vessel_folder_records(split_dir / "images", split_dir / "vessel", split_dir / "mask")
    return sorted(records, key=lambda record: int(record["id"]) if record["id"].isdigit() else record["id"])


def validate_les_av(root: str | Path) -> dict[str, list[VesselImageStats]]:
    """Open and check every file of a LES-AV folder; the stats of each split."""
    return {
        split: validate_vessel_records(les_av_records(root, split), LES_AV_LABEL_POSITIVE, f"LES-AV {root}/{split}")
        for split in LES_AV_SPLITS
    }


def multi_camera_records(
    drive_root: str | Path, les_av_root: str | Path, val_drive: int = 4, val_les_av: int = 2, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """(train, validation) records of DRIVE's and LES-AV's training photographs together: each dataset split
    by :func:`medseg.data.split_validation` with ``seed`` (``val_drive`` and ``val_les_av`` held out), LES-AV
    records marked with their vessel values (``label_positive``) and ids prefixed ``les-av-``. Test images of
    neither dataset are ever listed."""
    drive_train, drive_val = split_validation(drive_records(drive_root, "training"), n_val=val_drive, seed=seed)
    les_av = [{**record, "id": f"les-av-{record['id']}", LABEL_POSITIVE: list(LES_AV_LABEL_POSITIVE)}
              for record in les_av_records(les_av_root, "training")]
    les_av_train, les_av_val = split_validation(les_av, n_val=val_les_av, seed=seed)
    return drive_train + les_av_train, drive_val + les_av_val
