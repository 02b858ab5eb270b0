"""The classic U-Net (Ronneberger et al., 2015) for 2D and 3D inputs of any size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from medseg.networks.blocks import DoubleConv, Down, UpConcat, as_tuple_of_ints, checkpointed, resize_like

__all__ = ["UNet"]


class UNet(nn.Module):
    """U-Net: double-convolution encoder with 2x max pooling, a decoder that up-samples, pads to the encoder
    feature's size and concatenates it, and a 1x1 convolution to logits.

    Shapes: (B, in_channels, *S) -> (B, out_channels, *S) for any spatial size S (odd sizes included: the
    up-sampled tensor is zero-padded to the skip's size, nothing is cropped).

    With ``deep_supervision=True`` a 1x1 head is added on every decoder level but the last; in training mode
    the network then returns ``[logits, side_1, ..., side_{depth-1}]`` (side_1 from the finest of those levels),
    each interpolated (bi-/tri-linear) to (B, out_channels, *S). In eval mode it always returns one tensor.

    With ``checkpointing=True`` the activations inside every encoder and decoder block are recomputed in backward
    instead of stored (see :func:`medseg.networks.blocks.checkpointed`); outputs, gradients and batch-norm running
    statistics are the same as without it.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        upsample: str = "deconv",
        checkpointing: bool = False,
        deep_supervision: bool = False,
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3 (1 works as well).
            in_channels: input channels.
            out_channels: output channels (logits).
            features: widths from the first level down to the bottleneck; ``len(features) - 1`` poolings.
                The paper uses (64, 128, 256, 512, 1024); (8, 16, 32, 64, 128) is a CPU-sized variant.
            norm: ``"batch"``, ``"instance"``, any MONAI norm name/tuple, or ``None``.
            dropout: dropout probability inside every double convolution.
            upsample: ``"deconv"``, ``"bilinear"``/``"trilinear"`` (linear along every axis) or ``"nearest"``.
            checkpointing: recompute block activations in backward to save memory.
            deep_supervision: add side heads returned in training mode.
        """
        super().__init__()
        widths = as_tuple_of_ints(features, "features", min_len=2)
        self.checkpointing = checkpointing
        self.deep_supervision = deep_supervision

        self.input_block = DoubleConv(spatial_dims, in_channels, widths[0], norm, dropout)
        self.down_blocks = nn.ModuleList(
            Down(spatial_dims, c_in, c_out, norm, dropout) for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.up_blocks = nn.ModuleList(
            UpConcat(spatial_dims, c_in, c_skip, c_skip, norm, dropout, upsample)
            for c_in, c_skip in zip(widths[:0:-1], widths[-2::-1])
        )
        self.output_conv = Conv[Conv.CONV, spatial_dims](widths[0], out_channels, kernel_size=1)
        # heads on the decoder levels below full resolution, finest first
        self.side_heads = nn.ModuleList(
            Conv[Conv.CONV, spatial_dims](c, out_channels, kernel_size=1) for c in widths[1:-1]
        ) if deep_supervision else nn.ModuleList()

    def _block(self, block: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpointed(block, *inputs)
        return block(*inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, in_channels, *S) -> logits (B, out_channels, *S), or a list of such in training with deep
        supervision."""
        skips: list[torch.Tensor] = []
        h = self._block(self.input_block, x)
        for down in self.down_blocks:
            skips.append(h)
            h = self._block(down, h)
        decoded: list[torch.Tensor] = []
        for up in self.up_blocks:
            h = self._block(up, h, skips.pop())
            decoded.append(h)
        logits = self.output_conv(h)
        if not (self.deep_supervision and self.training):
            return logits
        # decoded[-1] feeds the main head; decoded[-2] is the finest level with a side head
        sides = [resize_like(head(f), logits, "linear") for head, f in zip(self.side_heads, decoded[-2::-1])]
        return [logits, *sides]
