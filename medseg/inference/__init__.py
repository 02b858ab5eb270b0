"""Inference: :func:`predict` (the generic sliding-window path), :func:`predict_image` (one read image through
the fundus steps of :mod:`medseg.fundus` and :func:`predict`), :func:`infer_files` (files in, masks out, for
``medseg infer`` and the bundles' ``inference.yaml``), the network as inference runs it (``runtime``), model
loading, readers/writers, and torchrun sharding (``distributed``)."""

from medseg.inference.files import (
    GEOMETRY_FILE,
    ImagePrediction,
    InferenceFailed,
    InferenceSummary,
    expand_inputs,
    fov_for,
    infer_files,
    predict_image,
)
from medseg.inference.export import ONNX_OPSET, export_onnx
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
from medseg.inference.predict import NORMALIZATIONS, predict
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
    "DEFAULT_PROBABILITY_DTYPE",
    "GEOMETRY_FILE",
    "NORMALIZATIONS",
    "ONNX_OPSET",
    "PRECISIONS",
    "RUNTIMES",
    "ImageMeta",
    "ImagePrediction",
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
    "expand_inputs",
    "export_onnx",
    "fov_for",
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
