"""Building blocks shared by the medseg networks.

The layers themselves come from MONAI (``Convolution``, ``UpSample``, the ``Conv``/``Pool`` factories); this module
only adds what the U-Net family needs on top: the double-convolution block, the pad-to-skip concatenation that
lets any input size through, resizing to a reference tensor, and activation checkpointing that is exact also for
modules with running statistics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Pool
from torch.utils.checkpoint import checkpoint

__all__ = [
    "DoubleConv",
    "Down",
    "UpConcat",
    "as_tuple_of_ints",
    "checkpointed",
    "linear_interp_mode",
    "pad_to_match",
    "resize_like",
]


def linear_interp_mode(spatial_dims: int) -> str:
    """``F.interpolate`` mode that is linear along every spatial axis: linear, bilinear or trilinear."""
    modes = {1: "linear", 2: "bilinear", 3: "trilinear"}
    if spatial_dims not in modes:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
    return modes[spatial_dims]


def resize_like(x: torch.Tensor, reference: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Resize ``x`` (B, C, *S) to the spatial size of ``reference`` (B, C', *S') -> (B, C, *S').

    ``mode`` is ``"nearest"`` or ``"linear"`` (bi-/tri-linear for 2D/3D, ``align_corners=False``).
    """
    if x.shape[2:] == reference.shape[2:]:
        return x
    if mode == "linear":
        return F.interpolate(x, size=reference.shape[2:], mode=linear_interp_mode(x.dim() - 2), align_corners=False)
    return F.interpolate(x, size=reference.shape[2:], mode=mode)


def pad_to_match(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``x`` (B, C, *S) symmetrically to the spatial size of ``reference`` (B, C', *S'), S <= S'.

    After 2x max pooling of an odd length ``n`` and 2x up-sampling the decoder holds ``n - 1`` samples; like the
    classic U-Net implementation we pad (half before, the rest after) instead of cropping the encoder feature.
    """
    pads: list[int] = []
    for axis in range(x.dim() - 1, 1, -1):  # F.pad lists the last axis first
        missing = reference.shape[axis] - x.shape[axis]
        if missing < 0:
            raise ValueError(f"cannot pad {tuple(x.shape)} down to {tuple(reference.shape)} along axis {axis}.")
        pads += [missing // 2, missing - missing // 2]
    if not any(pads):
        return x
    return F.pad(x, pads)


class DoubleConv(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by norm, dropout and ReLU.

    Shapes: (B, in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
    ) -> None:
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_channels: input channels.
            out_channels: output channels of both convolutions.
            norm: MONAI norm name/tuple (``"batch"``, ``"instance"``, ...) or ``None`` for no normalisation;
                the convolutions carry a bias only when there is no norm layer to absorb it.
            dropout: dropout probability after each normalisation (0 disables it).
        """
        super().__init__()
        bias = norm is None
        drop = dropout or None
        self.add_module(
            "conv_0",
            Convolution(spatial_dims, in_channels, out_channels, act="relu", norm=norm, dropout=drop, bias=bias),
        )
        self.add_module(
            "conv_1",
            Convolution(spatial_dims, out_channels, out_channels, act="relu", norm=norm, dropout=drop, bias=bias),
        )


class Down(nn.Sequential):
    """2x max pooling, then :class:`DoubleConv`.

    Shapes: (B, in_channels, *S) -> (B, out_channels, *floor(S / 2)).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str | tuple | None = "batch",
                 dropout: float = 0.0) -> None:
        """Arguments: those of :class:`DoubleConv`."""
        super().__init__()
        self.add_module("max_pooling", Pool[Pool.MAX, spatial_dims](kernel_size=2))
        self.add_module("convs", DoubleConv(spatial_dims, in_channels, out_channels, norm, dropout))


class UpConcat(nn.Module):
    """2x up-sampling to the skip's width, zero padding to the skip's size, concatenation, :class:`DoubleConv`.

    Shapes: ``x`` (B, in_channels, *S) and ``skip`` (B, skip_channels, *S') with 2S <= S' <= 2S + 1
    -> (B, out_channels, *S').
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        upsample: str = "deconv",
    ) -> None:
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_channels: channels of the tensor coming up from the coarser level.
            skip_channels: channels of the encoder feature concatenated at this level.
            out_channels: output channels.
            norm: see :class:`DoubleConv`.
            dropout: see :class:`DoubleConv`.
            upsample: ``"deconv"`` (2x transposed convolution to ``skip_channels``), ``"bilinear"``/``"trilinear"``
                (1x1 convolution to ``skip_channels``, then linear interpolation along every spatial axis) or
                ``"nearest"`` (1x1 convolution, then nearest-neighbour interpolation).
        """
        super().__init__()
        if upsample == "deconv":
            self.upsample = UpSample(spatial_dims, in_channels, skip_channels, scale_factor=2, mode="deconv")
        elif upsample in ("bilinear", "trilinear", "nearest"):
            interp_mode = "nearest" if upsample == "nearest" else linear_interp_mode(spatial_dims)
            self.upsample = UpSample(
                spatial_dims,
                in_channels,
                skip_channels,
                scale_factor=2,
                mode="nontrainable",
                interp_mode=interp_mode,
                align_corners=None if upsample == "nearest" else True,
            )
        else:
            raise ValueError(f"upsample must be 'deconv', 'bilinear', 'trilinear' or 'nearest', got {upsample!r}.")
        self.convs = DoubleConv(spatial_dims, 2 * skip_channels, out_channels, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = pad_to_match(self.upsample(x), skip)
        return self.convs(torch.cat([skip, up], dim=1))


@contextmanager
def _buffers_restored(module: nn.Module) -> Iterator[None]:
    """Put every buffer of ``module`` back to its value on entry (running statistics of batch norm, ...)."""
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _checkpoint_contexts(module: nn.Module) -> tuple[AbstractContextManager, AbstractContextManager]:
    return nullcontext(), _buffers_restored(module)


def checkpointed(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """``module(*inputs)`` with activation checkpointing: the activations inside ``module`` are not kept for
    backward but recomputed there, so only ``inputs`` stay in memory.

    Non-reentrant checkpointing is used, so parameters get gradients even when no input requires grad (the
    failure of the reentrant variant on the first block of a network), and the RNG state is replayed, so dropout
    draws the same mask in the recomputation. The recomputation is a second training-mode forward and would
    update batch-norm running statistics a second time; its buffers are restored afterwards, so a checkpointed
    model ends a step in exactly the state of the plain one.
    """
    return checkpoint(module, *inputs, use_reentrant=False, context_fn=partial(_checkpoint_contexts, module))


def as_tuple_of_ints(values: Sequence[int], name: str, min_len: int) -> tuple[int, ...]:
    """Validate a width list from a config: at least ``min_len`` positive integers."""
    widths = tuple(int(v) for v in values)
    if len(widths) < min_len or any(w <= 0 for w in widths):
        raise ValueError(f"{name} must hold at least {min_len} positive integers, got {tuple(values)}.")
    return widths
