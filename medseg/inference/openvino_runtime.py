"""The OpenVINO runtime: a trained network converted once to OpenVINO and compiled for this CPU.

:class:`OpenVINONetwork` replaces only the network call of :func:`~medseg.inference.predict`: windows, TTA,
stitching, scale and FOV stay medseg's. The network, its batch norms folded (as :class:`InferenceNetwork` does),
is converted by ``ov.convert_model`` with dynamic batch and spatial sizes, so one conversion serves every window
size and batch. With precision ``int8`` it is then quantized by NNCF's post-training quantization on calibration
windows (:mod:`medseg.inference.calibration`: the bundle's training photographs only).

Conversion takes seconds and quantization longer, so the result is cached in the user's cache folder
(:func:`cache_folder`), keyed by the weights' digest, the calibration windows' digest, the input channels and
spatial dimensions and the OpenVINO version. A manifest written last holds the SHA-256 of the model files; a
cached model whose files do not match it, or that OpenVINO cannot read, is rebuilt, never used.

OpenVINO picks the arithmetic by ``INFERENCE_PRECISION_HINT``: ``bf16`` for medseg's ``bfloat16`` (and for
``auto`` where :func:`~medseg.inference.native_bfloat16` finds AMX or AVX512-BF16), ``f32`` for ``float32``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openvino as ov
import torch
import torch.nn as nn

from medseg.inference.runtime import (
    PreparedNetwork,
    example_sizes,
    exportable_network,
    native_bfloat16,
    resolve_precision,
    weights_digest,
)

__all__ = ["OpenVINONetwork", "cache_folder", "converted_model"]

logger = logging.getLogger(__name__)

# Raised whenever the recipe of the cached model changes, so caches written by older code are never read.
_RECIPE = 1
# A conversion whose logits differ from PyTorch's by more than this on a random window is refused.
_CONVERSION_TOLERANCE = 1e-3


def cache_folder() -> Path:
    """Where converted models are kept: ``$XDG_CACHE_HOME/medseg/openvino``, else ``~/.cache/medseg/openvino``
    (the user's cache folder, as platformdirs places it on Linux)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "medseg" / "openvino"


def _windows_digest(windows: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for window in windows:
        digest.update(f"{window.dtype}|{window.shape}|".encode())
        digest.update(np.ascontiguousarray(window).tobytes())
    return digest.hexdigest()


def _convert(network: nn.Module, roi_size: Sequence[int], in_channels: int) -> ov.Model:
    """``network`` (batch norms folded) as an OpenVINO model with dynamic batch and spatial sizes, checked against
    PyTorch on one random window of ``roi_size``."""
    folded = exportable_network(network)
    dynamic = [ov.PartialShape([-1, in_channels, *([-1] * len(roi_size))])]
    model = None
    for size in example_sizes(roi_size):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape arithmetic traced on purpose
                model = ov.convert_model(folded, example_input=torch.zeros(1, in_channels, *size), input=dynamic)
            break
        except Exception as err:  # the tracer's and the converter's errors alike: try the window size next
            logger.debug("OpenVINO conversion at %s failed: %s", size, err)
    if model is None:
        raise ValueError("OpenVINO could not convert the network (PyTorch tracing failed at its window size)")
    window = torch.randn(1, in_channels, *roi_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = folded(window).float()
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    converted = torch.from_numpy(compiled(window.numpy())[0])
    difference = float((converted - expected).abs().max())
    if converted.shape != expected.shape or difference > _CONVERSION_TOLERANCE * max(1.0, float(expected.abs().max())):
        raise ValueError(f"the OpenVINO conversion of the network differs from PyTorch's (max |difference| "
                         f"{difference:.3g} on a random {tuple(roi_size)} window)")
    return model


def _quantize(model: ov.Model, windows: Sequence[np.ndarray]) -> ov.Model:
    """``model`` quantized to int8 by NNCF's post-training quantization, its ranges from ``windows``."""
    import nncf  # NNCF only for int8: it takes seconds to import

    return nncf.quantize(model, nncf.Dataset(list(windows)), subset_size=len(windows))


def _read_cached(folder: Path, key: str) -> ov.Model | None:
    """The model cached under ``key``, if its files match the manifest's digests and OpenVINO reads them."""
    manifest = folder / f"{key}.json"
    files = {suffix: folder / f"{key}{suffix}" for suffix in (".xml", ".bin")}
    try:
        expected = json.loads(manifest.read_text())["sha256"]
        for suffix, path in files.items():
            if hashlib.sha256(path.read_bytes()).hexdigest() != expected[suffix]:
                raise ValueError(f"{path}: its digest differs from the manifest's")
        return ov.Core().read_model(str(files[".xml"]), str(files[".bin"]))
    except FileNotFoundError:
        return None
    except Exception as err:  # a corrupt manifest, file or model: rebuilt below, never trusted
        logger.warning("the cached OpenVINO model %s is unreadable or stale (%s); converting again", key, err)
        return None


def _write_cached(folder: Path, key: str, model: ov.Model, description: dict) -> None:
    """Save ``model`` under ``key``: the model files first, each renamed into place, the manifest last."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        xml = Path(scratch) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        written = {".xml": xml, ".bin": xml.with_suffix(".bin")}
        digests = {suffix: hashlib.sha256(path.read_bytes()).hexdigest() for suffix, path in written.items()}
        for suffix, path in written.items():
            os.replace(path, folder / f"{key}{suffix}")
        manifest = Path(scratch) / "manifest.json"
        manifest.write_text(json.dumps({"sha256": digests, **description}, indent=2) + "\n")
        os.replace(manifest, folder / f"{key}.json")


def converted_model(
    network: nn.Module,
    roi_size: Sequence[int],
    in_channels: int,
    calibration: Sequence[np.ndarray] | None = None,
) -> ov.Model:
    """``network`` as an OpenVINO model, from the cache when a valid one is there, else converted (and, given
    ``calibration`` windows (1, C_in, *roi) float32, quantized to int8) and cached."""
    description = {
        "recipe": _RECIPE,
        "openvino": ov.__version__,
        "weights": weights_digest(network),
        "in_channels": in_channels,
        "spatial_dims": len(roi_size),
        "int8_calibration": _windows_digest(calibration) if calibration is not None else None,
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]
    folder = cache_folder()
    model = _read_cached(folder, key)
    if model is not None:
        return model
    model = _convert(network, roi_size, in_channels)
    if calibration is not None:
        model = _quantize(model, calibration)
    _write_cached(folder, key, model, description)
    return model


class OpenVINONetwork(PreparedNetwork):
    """A trained network compiled by OpenVINO for this CPU; returns float32 logits.

    Shapes: (N, C_in, *S) -> (N, C_out, *S), any N and S (a deep-supervised network's first output).
    Each thread infers with its own request, so threads may share one network.

    Args:
        network: the trained network (logits out).
        precision: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"int8"`` (with ``calibration``).
        roi_size: the window size, traced when the odd example size is refused and checked at conversion.
        in_channels: the network's input channels.
        calibration: for int8, windows (1, C_in, *roi) float32 as the network sees them.
    """

    def __init__(
        self,
        network: nn.Module,
        precision: str,
        roi_size: Sequence[int],
        in_channels: int,
        calibration: Sequence[np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.precision = resolve_precision(precision, "cpu")
        if (self.precision == "int8") != (calibration is not None):
            raise ValueError("int8 needs calibration windows, and only int8 takes them")
        model = converted_model(network, roi_size, in_channels, calibration)
        bfloat16 = self.precision == "bfloat16" or (self.precision == "int8" and native_bfloat16("cpu") is not None)
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if bfloat16 else "f32",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),  # the process's thread budget, as PyTorch's
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self._requests = threading.local()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        outputs = request.infer([x.detach().to("cpu", torch.float32).contiguous().numpy()])
        return torch.from_numpy(outputs[0])
