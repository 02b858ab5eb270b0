"""What ``medseg data check`` and ``medseg data preview`` do, as plain functions (the demo calls them too)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries

from medseg.data.camvid import (
    CLASS_NAMES,
    IGNORE_INDEX,
    PALETTE,
    ClassImageStats,
    camvid_records,
    read_label,
    validate_camvid,
    validate_camvid_sample,
)
from medseg.data.drive import drive_records, read_binary, validate_drive, validate_drive_sample
from medseg.data.files import read_pixels
from medseg.data.synthetic import ensure_synthetic_drive
from medseg.data.labelled_folder import LabelledFolder
from medseg.data.vessel_folders import VesselImageStats, validate_les_av
from medseg.resources import DATA_ROOT_VARIABLE
from medseg.utils import atomic_path, format_table

DATASETS = ("drive", "les-av", "camvid", "synthetic")
# each real dataset's folder in the data root
DATASET_FOLDERS = {"drive": "DRIVE", "les-av": "LES-AV", "camvid": "CamVid"}
VESSEL_COLOUR = np.array([0, 255, 80], dtype=np.uint8)
FOV_COLOUR = np.array([255, 255, 0], dtype=np.uint8)


def resolve_root(dataset: str, root: str | Path | None) -> Path:
    """The folder to read: ``root`` itself, by default the dataset's folder in ``$MEDSEG_DATA_ROOT`` (where the
    bundles find it, :func:`medseg.resources.data_root`); synthetic data is generated there (or in the cache) first.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset == "synthetic":
        return ensure_synthetic_drive(root)
    if root is None and DATA_ROOT_VARIABLE in os.environ:
        return Path(os.environ[DATA_ROOT_VARIABLE]) / DATASET_FOLDERS[dataset]
    if root is None:
        raise ValueError(f"--root is required for --dataset {dataset} (or set {DATA_ROOT_VARIABLE} to the folder "
                         f"holding {DATASET_FOLDERS[dataset]}/)")
    return Path(root)


def _sizes(stats) -> str:
    return ", ".join(sorted({f"{s.height}x{s.width}" for s in stats}))


def _percent_range(values: Sequence[float]) -> str:
    values = 100 * np.asarray(values)
    return f"{values.mean():.1f} ({values.min():.1f}-{values.max():.1f})"


def _vessel_columns(split: str, stats: Sequence) -> list:
    """split, images, sizes, label values and vessel percentages of one split's image statistics."""
    values = sorted({v for s in stats for v in s.label_values})
    return [split, len(stats), _sizes(stats), "{" + ",".join(map(str, values)) + "}",
            _percent_range([s.vessel_fraction for s in stats])]


def _drive_table(root: Path, title: str) -> str:
    stats = validate_drive(root)
    rows = []
    for split in ("training", "test"):
        split_stats = [s for s in stats if s.split == split]
        second = [s.vessel_fraction_2nd for s in split_stats if s.vessel_fraction_2nd is not None]
        rows.append([*_vessel_columns(split, split_stats), _percent_range(second) if second else "-",
                     _percent_range([s.fov_fraction for s in split_stats])])
    header = ["split", "images", "size HxW", "label values", "vessel % mean (min-max)", "2nd observer %", "FOV %"]
    return f"{title} {root}: {len(stats)} samples, every file valid\n" + format_table(header, rows, rule=False)


def _les_av_table(root: Path) -> str:
    stats = validate_les_av(root)
    rows = [[*_vessel_columns(split, split_stats), _percent_range([s.fov_fraction for s in split_stats])]
            for split, split_stats in stats.items()]
    header = ["split", "images", "size HxW", "label values (vessel: > 0)", "vessel % mean (min-max)", "FOV %"]
    total = sum(len(split_stats) for split_stats in stats.values())
    return f"LES-AV {root}: {total} samples, every file valid\n" + format_table(header, rows, rule=False)


def folder_report(folder: LabelledFolder, stats: Sequence[VesselImageStats] | Sequence[ClassImageStats]) -> str:
    """The table of a checked labelled folder (:func:`medseg.data.labelled_folder.check_labelled_folder`), with
    its digest, which a training run and a bundle trained on it record."""
    title = f"{folder.images}: {len(stats)} labelled photographs, every file valid, digest {folder.digest()}\n"
    if folder.has_classes:
        return title + _class_table(stats, folder.void_value)
    fov = [s.fov_fraction for s in stats if s.fov_fraction is not None]
    row = [*_vessel_columns("all", stats), _percent_range(fov) if fov else "estimated at training"]
    header = ["pairs", "images", "size HxW", "label values", "vessel % mean (min-max)", "FOV %"]
    return title + format_table(header, [row], rule=False)


def _class_table(stats: Sequence[ClassImageStats], void_value: int) -> str:
    """Pairs and sizes, then the share of the pixels of each label value (the classes, then void)."""
    counts = np.sum([s.class_counts for s in stats], axis=0)
    values = [*range(len(counts) - 1), void_value]
    shares = [[value, "void" if index == len(counts) - 1 else "", f"{100 * counts[index] / counts.sum():.2f}"]
              for index, value in enumerate(values)]
    return (format_table(["pairs", "size HxW"], [[len(stats), _sizes(stats)]], rule=False) + "\n\npixel % per label value\n"
            + format_table(["value", "", "pixels %"], shares, rule=False))


def _camvid_table(root: Path) -> str:
    stats = validate_camvid(root)
    splits = ("train", "val", "test")
    counts = {split: np.sum([s.class_counts for s in stats if s.split == split], axis=0) for split in splits}
    summary = []
    for split in splits:
        split_stats = [s for s in stats if s.split == split]
        present = np.flatnonzero(counts[split]).tolist()
        summary.append([split, len(split_stats), _sizes(split_stats), f"{min(present)}..{max(present)}"])
    names = list(CLASS_NAMES) + [f"void ({IGNORE_INDEX}, ignored)"]
    classes = [
        [index, name] + [f"{100 * counts[split][index] / counts[split].sum():.2f}" for split in splits]
        for index, name in enumerate(names)
    ]
    return (
        f"CamVid {root}: {len(stats)} samples, every file valid\n"
        + format_table(["split", "images", "size HxW", "label values"], summary, rule=False)
        + "\n\npixel % per label value\n"
        + format_table(["value", "class", *splits], classes, rule=False)
    )


def run_check(dataset: str, root: str | Path | None) -> str:
    """Validate every file of ``dataset`` under ``root`` and return the summary table as text.

    Raises DatasetError (naming each bad file and its problem) if anything is missing or invalid.
    """
    root = resolve_root(dataset, root)
    if dataset == "camvid":
        return _camvid_table(root)
    if dataset == "les-av":
        return _les_av_table(root)
    return _drive_table(root, "DRIVE" if dataset == "drive" else "Synthetic DRIVE-layout")


def _vessel_tile(record: dict[str, str]) -> np.ndarray:
    image = read_pixels(Path(record["image"]), mode="RGB")
    vessels = read_binary(record["label"]).astype(bool)
    fov_edge = find_boundaries(read_binary(record["mask"]), mode="inner")
    tile = image.copy()
    tile[vessels] = (0.4 * image[vessels] + 0.6 * VESSEL_COLOUR).astype(np.uint8)
    tile[fov_edge] = FOV_COLOUR
    return tile


def _camvid_tile(record: dict[str, str]) -> np.ndarray:
    image = read_pixels(Path(record["image"]), mode="RGB")
    return (0.5 * image + 0.5 * PALETTE[read_label(record["label"])]).astype(np.uint8)


def write_preview(dataset: str, root: str | Path | None, out: str | Path, n: int = 8) -> Path:
    """Write a PNG grid of the first ``n`` training images with their labels overlaid; return its path.

    Vessels are drawn in green and the FOV border in yellow; CamVid classes in the SegNet palette. The shown
    samples are validated first, so a bad file raises DatasetError before anything is written; the PNG is
    written to a temporary file and moved into place.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = resolve_root(dataset, root)
    if dataset == "camvid":
        split, validate, make_tile = "train", validate_camvid_sample, _camvid_tile
        records = camvid_records(root, split)[:n]
    else:
        split, validate, make_tile = "training", validate_drive_sample, _vessel_tile
        records = drive_records(root, split)[:n]
    for record in records:
        validate(split, record)
    tiles = [(record["id"], make_tile(record)) for record in records]

    columns = min(4, len(tiles))
    rows = -(-len(tiles) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (sample_id, tile) in zip(axes.flat, tiles):
        axis.imshow(tile)
        axis.set_title(sample_id, fontsize=9)
    figure.suptitle(f"{dataset}: {root}", fontsize=9)
    figure.tight_layout()
    try:
        with atomic_path(out) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
    finally:
        plt.close(figure)
    return Path(out)
