"""Sliding-window inference: :func:`predict` (the one inference path), model loading, readers/writers, FOV."""

from medseg.inference.fov import estimate_fov, fov_width
from medseg.inference.io import (
    ImageMeta,
    is_supported,
    output_paths,
    read_image,
    write_mask,
    write_overlay,
    write_probabilities,
)
from medseg.inference.loading import InferenceSettings, LoadedModel, load_model, match_channels, settings_from_metadata
from medseg.inference.predict import AUTO_SCALE_TOLERANCE, NORMALIZATIONS, fundus_scale, predict

__all__ = [
    "AUTO_SCALE_TOLERANCE",
    "NORMALIZATIONS",
    "ImageMeta",
    "InferenceSettings",
    "LoadedModel",
    "estimate_fov",
    "fov_width",
    "fundus_scale",
    "is_supported",
    "load_model",
    "match_channels",
    "output_paths",
    "predict",
    "read_image",
    "settings_from_metadata",
    "write_mask",
    "write_overlay",
    "write_probabilities",
]
