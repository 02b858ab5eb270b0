"""The network of a loaded model as ONNX: ``models/model.onnx`` for ``medseg bundle export --onnx``.

The exported graph is the network as medseg runs it (batch norms folded, a deep-supervised network's first
output), with dynamic batch and spatial axes, traced by PyTorch's TorchScript-based exporter (``dynamo=False``: the
dynamo exporter needs ``onnxscript``, which medseg does not depend on). OpenVINO and ONNX Runtime read it; the
windows, TTA, stitching, scale and FOV around it stay medseg's.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

from medseg.inference.loading import LoadedModel
from medseg.inference.runtime import example_sizes, exportable_network

__all__ = ["ONNX_OPSET", "export_onnx"]

# an opset that OpenVINO, ONNX Runtime and PyTorch's TorchScript exporter all support
ONNX_OPSET = 17


def export_onnx(model: LoadedModel, path: str | Path) -> Path:
    """Write ``model``'s network to ``path`` as ONNX (input ``image`` (N, C_in, *S), output ``logits``
    (N, C_out, *S), N and S dynamic), traced at an odd size where the network takes one (so a U-Net's padding of
    odd decoder sizes is in the graph), else at its window size. The file appears whole or not at all."""
    settings = model.settings
    network = exportable_network(model.network)
    spatial = {axis: f"size{axis - 2}" for axis in range(2, 2 + settings.spatial_dims)}
    path = Path(path)
    failures = []
    for size in example_sizes(settings.roi_size):
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".onnx", delete=False) as scratch:
            pass
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape arithmetic traced on purpose
                torch.onnx.export(
                    network, (torch.zeros(1, settings.in_channels, *size),), scratch.name, dynamo=False,
                    input_names=["image"], output_names=["logits"], opset_version=ONNX_OPSET,
                    dynamic_axes={"image": {0: "batch", **spatial}, "logits": {0: "batch", **spatial}},
                )
            os.replace(scratch.name, path)
            return path
        except Exception as err:  # the tracer's and the exporter's errors alike: try the window size next
            failures.append(f"at {size}: {type(err).__name__}: {err}")
        finally:
            Path(scratch.name).unlink(missing_ok=True)
    raise ValueError(f"{path}: the network could not be exported to ONNX ({'; '.join(failures)})")
