"""The settings of inference, each with its one name and its one default.

:class:`InferenceSettings` carries every setting from a bundle's ``configs/inference.yaml`` (the
``inference_settings`` id, whose keys are these field names) or from ``medseg infer`` (``--sw-overlap`` for
``sw_overlap``, ...) to :func:`medseg.inference.predict`, whose keyword defaults are the defaults written here;
the CLI's help reads them from here too. Only the device stays outside: it is where a run computes, not a
property of the model.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import torch

__all__ = ["InferenceSettings", "complete_settings", "output_channels"]


@dataclass(frozen=True)
class InferenceSettings:
    """What :func:`medseg.inference.infer_files` and :func:`~medseg.inference.predict` need besides the network
    and the image (``None``: not known, completed by :func:`complete_settings` or per image)."""

    roi_size: tuple[int, ...] | None = None  # None: 256 x 256 in 2D, 96^3 in 3D
    sw_overlap: float = 0.25
    sw_batch_size: int | None = None  # None: predict()'s device-dependent default
    mode: str = "gaussian"
    normalization: str | None = None  # None: scale255 for 8-bit images, standardize otherwise
    activation: str | None = None  # None: sigmoid for one output channel, softmax for more
    threshold: float = 0.5
    tta: bool | str = False  # as predict(): False / True, or "none" / "flips" / "dihedral"
    preprocessing: str = "rgb"
    # as predict(): auto (bfloat16 where the device runs it natively), float32, bfloat16; int8 (OpenVINO only)
    precision: str = "auto"
    # what computes the network: torch, openvino (CPU) or auto (OpenVINO on a CPU where it is installed)
    runtime: str = "torch"
    # 2D field of view: "auto" (fundus estimate), "none", or a folder of masks NAME.* / NAME_mask.*;
    # None: auto for fundus models, none otherwise
    fov: str | None = None
    # fundus models: "auto" (to the training FOV width), "none" or a resampling factor
    scale: str | float = "auto"
    # erode the edges of probabilities resampled up from a shrunk photograph (by how much and why:
    # medseg.fundus.upsampled_edge_radius)
    upsampled_edge_erosion: bool = False
    slice_axis: int = 2  # the spatial axis a 2D network slices a volume along
    fundus: bool = False
    training_fov_width: float | None = None
    # the threshold that maximised F1 on the validation images of the shipped weights (metadata.json)
    validation_threshold: float | None = None
    # network pixels by which the shipped weights mark vessels wider on a resampled photograph, measured on their
    # held-out photographs (metadata.json; medseg.engines.width); None: medseg.fundus.RESAMPLED_VESSEL_WIDENING
    resampled_vessel_widening: float | None = None
    in_channels: int | None = None
    out_channels: int | None = None
    spatial_dims: int | None = None

    def __post_init__(self) -> None:
        if self.scale in ("auto", "none"):
            return
        try:
            factor = float(self.scale)
        except (TypeError, ValueError):
            raise ValueError(f"scale must be auto, none or a number, got {self.scale!r}") from None
        if not factor > 0:
            raise ValueError(f"scale must be a positive factor, got {self.scale!r}")
        if not self.fundus:
            raise ValueError("scale applies to fundus models only (a bundle with medseg.fundus, or --fundus-width)")
        object.__setattr__(self, "scale", factor)


def complete_settings(network: torch.nn.Module, settings: InferenceSettings) -> InferenceSettings:
    """``settings`` with what is still open filled in: the input channels and spatial dimensions from the first
    convolution's weights (C_out, C_in, *kernel), the window (256 in 2D, 96 in 3D), the output channels from what
    the network produces for one window (:func:`output_channels`), and the activation (sigmoid for one output
    channel, softmax for more)."""
    weights = [p for p in network.parameters() if p.ndim >= 4]
    if weights:
        # the network's own weights over what a bundle's metadata declares: a checkpoint trained with other
        # settings (preprocessing=green: one input channel) is still run as it was trained
        settings = replace(settings, in_channels=int(weights[0].shape[1]), spatial_dims=weights[0].ndim - 2)
    spatial_dims = len(settings.roi_size) if settings.roi_size else settings.spatial_dims or 2
    if settings.spatial_dims is not None and spatial_dims != settings.spatial_dims:
        raise ValueError(
            f"roi_size {settings.roi_size} has {spatial_dims} sizes but the network is {settings.spatial_dims}D"
        )
    roi_size = tuple(settings.roi_size or ((256, 256) if spatial_dims == 2 else (96, 96, 96)))
    if settings.in_channels is not None:
        settings = replace(settings, out_channels=output_channels(network, settings.in_channels, roi_size))
    return replace(
        settings,
        roi_size=roi_size,
        spatial_dims=spatial_dims,
        activation=settings.activation or ("softmax" if (settings.out_channels or 1) > 1 else "sigmoid"),
    )


# what each network produced, so a model's settings changed later (LoadedModel.with_settings) probe it no more
_OUTPUT_CHANNELS: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()
# the probe's side (a whole-image window's, and a larger window's first): the channels are the same at any size the
# network takes, and an ensemble's pass over a 1024 x 1024 window took 4.4 s of a CPU's start-up
_PROBE_SIDE = 64


def output_channels(network: torch.nn.Module, in_channels: int, roi_size: tuple[int, ...]) -> int:
    """The channels of the logits ``network`` returns for one zero window (1, ``in_channels``, *size) (a
    deep-supervised network's list: its first element): read from what it produces, since neither the order of its
    parameters (a transposed-convolution head is (C_in, C_out, *k)) nor a bundle's metadata is proof. The window is
    ``roi_size`` cut to ``_PROBE_SIDE`` along each axis (a non-positive size: whole-image windows), and ``roi_size``
    itself where the network refuses that."""
    if network not in _OUTPUT_CHANNELS:
        small = tuple(min(side, _PROBE_SIDE) if side > 0 else _PROBE_SIDE for side in roi_size)
        try:
            logits = _probe(network, in_channels, small)
        except ValueError:
            if small == roi_size or min(roi_size) <= 0:
                raise
            logits = _probe(network, in_channels, roi_size)
        _OUTPUT_CHANNELS[network] = int(logits.shape[1])
    return _OUTPUT_CHANNELS[network]


def _probe(network: torch.nn.Module, in_channels: int, size: tuple[int, ...]) -> torch.Tensor:
    """The logits of ``network`` (evaluation mode, no gradients) for a zero (1, ``in_channels``, *``size``) window;
    ``ValueError`` naming the shape where the network fails on it."""
    parameter = next(network.parameters(), torch.zeros(()))
    window = torch.zeros(1, in_channels, *size, dtype=parameter.dtype, device=parameter.device)
    training = network.training
    network.eval()  # a network in training mode would fold the zero window into its batch-norm statistics
    try:
        with torch.no_grad():
            logits = network(window)
    except RuntimeError as err:  # shapes, dtypes: torch names the layer
        raise ValueError(f"the network fails on a window of shape {tuple(window.shape)}: {err}") from None
    finally:
        network.train(training)
    return logits[0] if isinstance(logits, (list, tuple)) else logits
