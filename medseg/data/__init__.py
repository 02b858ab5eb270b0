"""Datasets (DRIVE, LES-AV, CamVid, labelled vessel folders, synthetic retina and volumes), their validation, and
MONAI transform chains. Fundus geometry and appearance (FOV, scale, contrast) come from :mod:`medseg.fundus`.

The transform chains (``medseg.data.transforms``) are imported on first use, so that ``medseg data check``
and code that only needs :class:`DatasetError` do not pay for importing MONAI's transforms.
"""

from __future__ import annotations

import importlib

from medseg.data.camvid import CLASS_NAMES, IGNORE_INDEX, PALETTE, camvid_records, class_frequencies, validate_camvid
from medseg.data.drive import drive_records, read_binary, split_validation, validate_drive
from medseg.data.files import DatasetError, as_stored_image, read_photograph, read_pixels
from medseg.data.vessel_folders import (
    LABEL_POSITIVE,
    LES_AV_LABEL_POSITIVE,
    checked_vessel_records,
    les_av_records,
    multi_camera_records,
    read_vessel_label,
    validate_les_av,
    validate_vessel_records,
    vessel_folder_records,
)
from medseg.data.synthetic import (
    synthetic_retina,
    synthetic_volume,
    write_synthetic_drive,
    write_synthetic_folder,
    write_synthetic_volumes,
)
from medseg.data.labelled_folder import LabelledFolder, check_labelled_folder, labelled_folder_records, mix_records

__all__ = [
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "LABEL_POSITIVE",
    "LES_AV_LABEL_POSITIVE",
    "PALETTE",
    "DatasetError",
    "RandConvolutiond",
    "RandVesselZoomd",
    "camvid_records",
    "camvid_transforms",
    "checked_vessel_records",
    "class_frequencies",
    "drive_records",
    "les_av_records",
    "multi_camera_records",
    "read_binary",
    "read_vessel_label",
    "split_validation",
    "synthetic_retina",
    "synthetic_volume",
    "validate_camvid",
    "validate_drive",
    "validate_les_av",
    "validate_vessel_records",
    "vessel_folder_records",
    "cached_dataset",
    "pil_reader",
    "read_photograph",
    "read_pixels",
    "as_stored_image",
    "vessel_transforms",
    "zoom_vessel_patch",
    "write_synthetic_drive",
    "write_synthetic_folder",
    "write_synthetic_volumes",
    "LabelledFolder",
    "check_labelled_folder",
    "labelled_folder_records",
    "mix_records",
]

_LAZY = {
    name: "medseg.data.transforms"
    for name in (
        "RandConvolutiond", "RandVesselZoomd", "cached_dataset", "camvid_transforms", "pil_reader",
        "vessel_transforms", "zoom_vessel_patch",
    )
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
