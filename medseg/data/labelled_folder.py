"""A user's own labelled photographs as a training dataset: checked, split, described, and read by a bundle.

The folder is the layout ``medseg evaluate --images`` scores (:func:`medseg.data.vessel_folder_records`: images,
labels and optional FOV masks paired by file stem). :func:`check_labelled_folder` opens every file before any
training starts; :func:`labelled_folder_records` is the reader a bundle's train.yaml names as its ``records``
(``{_target_: medseg.data.labelled_folder_records, images: ..., labels: ...}``), so training on a folder needs
no records expression of its own. Photographs without FOV masks get the estimate inference uses, written once
as PNG masks into the run's output folder (the bundles' transforms read masks from files).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medseg.data.camvid import ClassImageStats, validate_class_pair
from medseg.data.drive import split_validation
from medseg.data.files import DatasetError, check_all, read_pixels
from medseg.data.vessel_folders import (
    LABEL_POSITIVE,
    VesselImageStats,
    validate_vessel_records,
    vessel_folder_records,
)
from medseg.fundus import estimate_fov

__all__ = [
    "LabelledFolder",
    "check_labelled_folder",
    "default_validation_size",
    "labelled_folder_records",
    "mix_records",
]

# a folder must give at least one photograph to train on and one to validate on
MIN_PAIRS = 2
# of a folder without its own validation folder, this fraction is held out (at least one photograph each side)
VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class LabelledFolder:
    """Images, labels and optional FOV masks paired by file stem. Vessel labels are binary, or index maps whose
    vessel values are ``label_positive``; with ``void_value`` the labels are index maps of ``classes`` classes
    (values 0..classes-1) and that value for unlabelled pixels, as a road-scene bundle learns them (no FOV)."""

    images: Path
    labels: Path
    masks: Path | None = None
    label_positive: tuple[int, ...] = field(default_factory=tuple)
    classes: int | None = None
    void_value: int | None = None

    def __post_init__(self) -> None:
        if (self.classes is None) != (self.void_value is None):
            raise ValueError("index-map labels of classes need both the class count and the void value")
        if self.void_value is not None and (self.masks is not None or self.label_positive):
            raise ValueError("labels of classes take no FOV masks and no vessel values")
        if self.void_value is not None and not self.classes <= self.void_value <= 255:
            raise ValueError(f"the void value {self.void_value} must lie above the classes 0..{self.classes - 1} and "
                             "be at most 255")

    @classmethod
    def of(cls, images: str | Path, labels: str | Path, masks: str | Path | None = None,
           label_positive: Sequence[int] | None = None, classes: int | None = None,
           void_value: int | None = None) -> LabelledFolder:
        """The folder of paths as typed (made absolute); the checks of the fields are ``__post_init__``'s."""
        return cls(Path(images).resolve(), Path(labels).resolve(), None if masks is None else Path(masks).resolve(),
                   tuple(int(value) for value in label_positive or ()), classes, void_value)

    @property
    def has_classes(self) -> bool:
        """Whether the labels are index maps of classes (road scenes), not vessel labels."""
        return self.void_value is not None

    def records(self) -> list[dict]:
        """One record per pair, {"id", "image", "label"[, "mask"][, "label_positive"]}, sorted by id."""
        records = vessel_folder_records(self.images, self.labels, self.masks)
        if self.label_positive:
            records = [{**record, LABEL_POSITIVE: list(self.label_positive)} for record in records]
        return records

    def digest(self) -> str:
        """sha256 (first 16 hex digits) of every paired file's name and bytes: the same files give the same
        digest wherever the folder lies."""
        sha = hashlib.sha256()
        for record in self.records():
            for key in ("image", "label", "mask"):
                if key in record:
                    sha.update(f"{key}:{Path(record[key]).name}\n".encode())
                    sha.update(hashlib.sha256(Path(record[key]).read_bytes()).digest())
        return sha.hexdigest()[:16]


def _check_label_values(stats: VesselImageStats, record: dict, positive: Sequence[int]) -> None:
    if stats.vessel_fraction == 0.0:
        named = f"none of the named vessel values {list(positive)}" if positive else "no vessel pixel"
        raise DatasetError(f"{record['label']}: label holds {named} (values {list(stats.label_values)}); a binary "
                           "label or an index map with --label-positive V ... is expected")


def check_labelled_folder(folder: LabelledFolder) -> list[VesselImageStats] | list[ClassImageStats]:
    """Open every file of ``folder``; the stats of each pair.

    Raises:
        DatasetError: one line per problem, each naming the file: an empty folder, an image without its label
            or mask, a label without its image, fewer than :data:`MIN_PAIRS` pairs, an unreadable file, a label
            or mask whose size is not its image's, a label that is neither binary nor an index map holding one
            of the named vessel values; for labels of classes, a value that is neither a class nor the void
            value, or a label all void.
    """
    records = folder.records()
    if len(records) < MIN_PAIRS:
        raise DatasetError(f"{folder.images}: {len(records)} labelled photograph(s); at least {MIN_PAIRS} are needed "
                           "(one to train on, one to validate on)")
    if folder.has_classes:
        return check_all(validate_class_pair, [(record, folder.classes, folder.void_value) for record in records],
                         f"labelled folder {folder.images}")
    stats = validate_vessel_records(records, folder.label_positive or None, f"labelled folder {folder.images}")
    problems = []
    for record, stat in zip(records, stats):
        try:
            _check_label_values(stat, record, folder.label_positive)
        except DatasetError as err:
            problems.append(str(err))
    if problems:
        raise DatasetError(f"{len(problems)} invalid file(s) in labelled folder {folder.images}:\n" + "\n".join(problems))
    return stats


def default_validation_size(pairs: int) -> int:
    """Photographs held out of ``pairs`` when no validation size is given: a fifth, at least one, and at least one
    left to train on."""
    return min(max(1, round(VALIDATION_FRACTION * pairs)), pairs - 1)


def _with_estimated_fov(records: list[dict], fov_dir: Path) -> list[dict]:
    """``records`` with a "mask": the FOV estimate of inference (:func:`medseg.fundus.estimate_fov`),
    written as ``fov_dir/<id>.png`` {0, 255}."""
    fov_dir.mkdir(parents=True, exist_ok=True)
    estimated = []
    for record in records:
        mask_path = fov_dir / f"{record['id']}.png"
        fov = estimate_fov(read_pixels(Path(record["image"]), mode="RGB"), name=record["image"])
        Image.fromarray(fov.astype(np.uint8) * 255).save(mask_path)
        estimated.append({**record, "mask": str(mask_path)})
    return estimated


def labelled_folder_records(
    images: str,
    labels: str,
    masks: str | None = None,
    label_positive: Sequence[int] | None = None,
    n_val: int | None = None,
    seed: int = 0,
    val_images: str | None = None,
    val_labels: str | None = None,
    val_masks: str | None = None,
    fov_dir: str | None = None,
) -> tuple[list[dict], list[dict]]:
    """(train, validation) records of a labelled folder, the reader a bundle config names as its ``records``.

    Validation is ``val_images``/``val_labels`` (and ``val_masks``) when given, else ``n_val`` photographs of
    the folder (default :func:`default_validation_size`) held out by :func:`medseg.data.split_validation` with
    ``seed``. With ``fov_dir`` (fundus photographs), those without masks get estimated FOV masks written under
    it; without it (road scenes) the records carry no mask.
    """
    train = LabelledFolder.of(images, labels, masks, label_positive).records()
    if val_images is not None:
        if val_labels is None:
            raise ValueError("val_labels is required with val_images")
        val = LabelledFolder.of(val_images, val_labels, val_masks, label_positive).records()
    else:
        train, val = split_validation(train, n_val=n_val or default_validation_size(len(train)), seed=seed)
    for part, given, name in ((train, masks, "train"), (val, val_masks if val_images else masks, "val")):
        if given is None and fov_dir is not None:
            part[:] = _with_estimated_fov(part, Path(fov_dir) / name)
    return train, val


def mix_records(own: tuple[list[dict], list[dict]], bundle: tuple[list[dict], list[dict]], ratio: float,
                seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``own`` training records plus ``ratio`` of the bundle's own training photographs per own photograph (a
    seeded choice, at most all of them); validation stays ``own``'s, so choices are made on the user's data."""
    if ratio < 0:
        raise ValueError(f"the ratio of the bundle's photographs must be >= 0, got {ratio}")
    count = min(len(bundle[0]), round(ratio * len(own[0])))
    chosen = np.random.default_rng(seed).permutation(len(bundle[0]))[:count]
    return own[0] + [bundle[0][index] for index in sorted(chosen.tolist())], own[1]
