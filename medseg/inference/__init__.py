"""Sliding-window inference: :func:`predict` (the one inference path), :func:`infer_files` (files in, masks out,
for ``medseg infer`` and the bundles' ``inference.yaml``), model loading, readers/writers, FOV."""

from medseg.inference.files import (
    InferenceFailed,
    InferenceSummary,
    expand_inputs,
    fov_for,
    infer_files,
    predict_image,
)
from medseg.inference.export import ONNX_OPSET, export_onnx
from medseg.inference.fov import estimate_fov, fov_width
from medseg.inference.io import (
    DEFAULT_PROBABILITY_DTYPE,
    ImageMeta,
    is_supported,
    output_paths,
    read_image,
    write_mask,
    write_overlay,
    write_probabilities,
)
from medseg.inference.loading import (
    LoadedModel,
    bundle_training_images,
    ensemble_members_in,
    load_model,
    network_input,
    read_state_dict,
    settings_from_metadata,
)
from medseg.inference.prepare import prepare_network
from medseg.inference.predict import AUTO_SCALE_TOLERANCE, NORMALIZATIONS, fundus_scale, predict
from medseg.inference.runtime import (
    PRECISIONS,
    RUNTIMES,
    InferenceNetwork,
    PreparedNetwork,
    describe_precision,
    native_bfloat16,
    resolve_precision,
    resolve_runtime,
    weights_digest,
)
from medseg.inference.settings import InferenceSettings, complete_settings

__all__ = [
    "AUTO_SCALE_TOLERANCE",
    "DEFAULT_PROBABILITY_DTYPE",
    "NORMALIZATIONS",
    "ONNX_OPSET",
    "PRECISIONS",
    "RUNTIMES",
    "ImageMeta",
    "InferenceFailed",
    "InferenceNetwork",
    "InferenceSettings",
    "InferenceSummary",
    "LoadedModel",
    "PreparedNetwork",
    "bundle_training_images",
    "complete_settings",
    "describe_precision",
    "ensemble_members_in",
    "estimate_fov",
    "expand_inputs",
    "export_onnx",
    "fov_for",
    "fov_width",
    "fundus_scale",
    "infer_files",
    "is_supported",
    "load_model",
    "network_input",
    "native_bfloat16",
    "output_paths",
    "predict",
    "predict_image",
    "prepare_network",
    "read_image",
    "read_state_dict",
    "resolve_precision",
    "resolve_runtime",
    "settings_from_metadata",
    "weights_digest",
    "write_mask",
    "write_overlay",
    "write_probabilities",
]
