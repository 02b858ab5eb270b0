"""The network of a loaded model prepared for inference on the runtime its settings name.

:func:`prepare_network` is where the runtime is chosen (:func:`~medseg.inference.resolve_runtime`): PyTorch's
:class:`~medseg.inference.InferenceNetwork` or OpenVINO's
:class:`~medseg.inference.openvino_runtime.OpenVINONetwork` (imported only then: OpenVINO is an optional extra).
Either is a :class:`~medseg.inference.runtime.PreparedNetwork` that :func:`~medseg.inference.predict` calls alike.
"""

from __future__ import annotations

import logging

import torch

from medseg.inference.loading import LoadedModel
from medseg.inference.runtime import (
    InferenceNetwork,
    PreparedNetwork,
    describe_precision,
    resolve_precision,
    resolve_runtime,
)

__all__ = ["prepare_network"]

logger = logging.getLogger(__name__)


def prepare_network(model: LoadedModel, device: str | torch.device = "cpu") -> PreparedNetwork:
    """``model.network`` ready for :func:`~medseg.inference.predict` on ``device`` by the model's ``runtime`` and
    ``precision`` settings; int8 first draws its calibration windows from the bundle's training photographs
    (:func:`~medseg.inference.calibration.calibration_windows`). Logs the runtime and precision. A network that
    is already a :class:`PreparedNetwork` is returned as it is (it keeps its runtime and precision)."""
    settings = model.settings
    if isinstance(model.network, PreparedNetwork):
        return model.network
    runtime = resolve_runtime(settings.runtime, device)
    logger.info("inference in %s, by %s", describe_precision(settings.precision, device),
                "OpenVINO" if runtime == "openvino" else "PyTorch")
    if runtime == "torch":
        return InferenceNetwork.of(model.network, device, settings.precision, settings.spatial_dims)
    from medseg.inference.openvino_runtime import OpenVINONetwork

    calibration = None
    if resolve_precision(settings.precision, device) == "int8":
        # here, not at the top: calibration reads photographs through medseg.inference.files, which imports this
        from medseg.inference.calibration import calibration_windows

        calibration = calibration_windows(model)
    return OpenVINONetwork(model.network, settings.precision, settings.roi_size, settings.in_channels, calibration)
