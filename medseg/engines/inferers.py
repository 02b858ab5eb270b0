"""MONAI inferers that route engines through medseg's code paths.

- :class:`PredictInferer` makes evaluators score exactly what ``medseg infer`` writes: whole images through
  :func:`medseg.inference.predict` (sliding window, normalisation, TTA, activation), one image at a time.
- :class:`AutocastInferer` runs a training forward pass under ``torch.autocast`` on any device type, in the
  channels-last layout for 2D. MONAI's trainer only knows CUDA autocast (``amp=True``). On this project's
  2-core Xeon a 1.9 M-parameter U-Net trains at 96x96 about 14x faster channels-last than in the default
  layout (oneDNN's convolutions), and bf16 autocast doubles that again (AMX). Where a CPU has no native bf16
  (AVX2 only), oneDNN emulates it and a step is slower than in float32: ``"auto"`` takes bf16 only where the
  device computes it natively (:func:`medseg.inference.native_bfloat16`, the rule of inference's precision).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from medseg.inference import (
    InferenceSettings, LoadedModel, PreparedNetwork, native_bfloat16, prepare_network, weights_digest,
)
from medseg.inference.predict import predict

__all__ = ["AutocastInferer", "PredictInferer"]

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = (None, "auto", "bfloat16", "float16")


class PredictInferer(Inferer):
    """Probabilities of whole images, (B, C, *spatial) -> (B, K, *spatial), by :func:`medseg.inference.predict`.

    Args:
        roi_size: sliding-window size.
        runtime: what computes the network (:func:`~medseg.inference.resolve_runtime`); other than ``"torch"``,
            the network is prepared once per weights (:func:`~medseg.inference.prepare_network`).
        predict_kwargs: any other keyword argument of :func:`~medseg.inference.predict` (``sw_overlap``,
            ``sw_batch_size``, ``mode``, ``normalization``, ``activation``, ``tta``, ``precision``, ...).
    """

    def __init__(self, roi_size: Sequence[int], runtime: str = InferenceSettings.runtime, **predict_kwargs: Any) -> None:
        super().__init__()
        self.roi_size = tuple(roi_size)
        self.runtime = runtime
        self.predict_kwargs = predict_kwargs
        self._prepared: tuple[tuple[int, str], PreparedNetwork] | None = None

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        device = inputs.device
        images = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs  # plain tensors: no meta tracking
        if self.runtime != "torch":
            network = self._prepared_network(network, device)
        probs = [predict(network, image, roi_size=self.roi_size, device=device, **self.predict_kwargs) for image in images]
        return torch.stack(probs).to(device=device, dtype=torch.float32)

    def _prepared_network(self, network: torch.nn.Module, device: torch.device) -> PreparedNetwork:
        """``network`` on the runtime, prepared again only when it is another network or its weights changed."""
        identity = (id(network), weights_digest(network))
        if self._prepared is None or self._prepared[0] != identity:
            precision = self.predict_kwargs.get("precision", InferenceSettings.precision)
            settings = InferenceSettings(roi_size=self.roi_size, precision=precision, runtime=self.runtime)
            self._prepared = identity, prepare_network(LoadedModel(network, settings), device)
        return self._prepared[1]


def _to_float32(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.float()
    if isinstance(output, (list, tuple)):
        return type(output)(_to_float32(item) for item in output)
    return output


class AutocastInferer(Inferer):
    """``network(inputs)`` under ``torch.autocast(device_type, dtype)``, outputs returned in float32.

    Losses then run in float32 on the logits (or on each deep-supervision output), which keeps Dice and BCE
    stable whatever the autocast dtype. 2D batches (N, C, H, W) and the network are put in the channels-last
    memory layout first (a no-op when they already are), the layout oneDNN convolves fastest.

    Args:
        dtype: ``"auto"`` (bfloat16 where the inputs' device computes it natively, else no autocast),
            ``"bfloat16"``, ``"float16"`` or ``None`` (no autocast: a plain float32 forward pass).
        channels_last: use the channels-last layout for 2D batches.
    """

    def __init__(self, dtype: str | None = "auto", channels_last: bool = True) -> None:
        super().__init__()
        if dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast dtype must be auto, bfloat16, float16 or null, got {dtype!r}")
        self.requested = dtype
        self._resolved: dict[str, torch.dtype | None] = {}
        self.channels_last = channels_last

    def dtype_for(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype on ``device`` (``None``: none), said once per device type in the log."""
        if device.type not in self._resolved:
            if self.requested == "auto":
                native = native_bfloat16(device)
                dtype = torch.bfloat16 if native else None
                logger.info("training in %s (auto: %s on %s)", "bfloat16 autocast" if native else "float32",
                            native or "no native bfloat16", device.type)
            else:
                dtype = getattr(torch, self.requested) if self.requested else None
            self._resolved[device.type] = dtype
        return self._resolved[device.type]

    def dtype_name(self, device: str | torch.device) -> str:
        """What the forward pass computes in on ``device``: ``"bfloat16"``, ``"float16"`` or ``"float32"`` (what a
        run's ``autocast_dtype: auto`` resolved to, for its MLflow tags)."""
        return str(self.dtype_for(torch.device(device)) or torch.float32).removeprefix("torch.")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            network.to(memory_format=torch.channels_last)
        dtype = self.dtype_for(inputs.device)
        with torch.autocast(device_type=inputs.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return _to_float32(network(inputs, *args, **kwargs))
