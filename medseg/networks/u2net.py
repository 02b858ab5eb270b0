"""U²-Net and its small variant U²-Net-P (Qin et al., 2020), with the published module names.

Parameter names follow the released ``u2net.pth`` / ``u2netp.pth`` (``stage1.rebnconvin.conv_s1.weight``, ...,
``side1.*``, ``outconv.*``), so those files load with ``strict=True`` into ``U2Net(in_channels=3,
out_channels=1)`` and ``U2NetLite(in_channels=3, out_channels=1)``. Unlike the release the outputs are logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
from monai.networks.layers.factories import Act, Conv, Norm, Pool

from medseg.networks.blocks import resize_like

__all__ = ["RSU", "RSU4F", "REBNConv", "StageSpec", "U2Net", "U2NetLite"]


def _ceil_pool(spatial_dims: int) -> nn.Module:
    # ceil_mode keeps every level at least one sample wide, so any input size passes through six levels
    return Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2, ceil_mode=True)


class REBNConv(nn.Module):
    """3x3 convolution (dilation ``dilation``, same padding) -> batch norm -> ReLU.

    Shapes: (B, in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv_s1 = Conv[Conv.CONV, spatial_dims](
            in_channels, out_channels, kernel_size=3, padding=dilation, dilation=dilation
        )
        self.bn_s1 = Norm[Norm.BATCH, spatial_dims](out_channels)
        self.relu_s1 = Act[Act.RELU](inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block RSU-L (L = ``height``, 4..7): an input convolution, a small U-Net of depth L with
    ceil-mode pooling, a dilated bottom convolution and bilinear up-sampling to each skip, plus the residual.

    Modules are named as published: ``rebnconvin``, ``rebnconv1``..``rebnconv{L}``, ``rebnconv{L-1}d``..
    ``rebnconv1d`` (pools ``pool1``..``pool{L-2}``).

    Shapes: (B, in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(self, spatial_dims: int, height: int, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        if height < 3:
            raise ValueError(f"RSU height must be at least 3, got {height}.")
        self.height = height
        self.rebnconvin = REBNConv(spatial_dims, in_channels, out_channels)
        self.rebnconv1 = REBNConv(spatial_dims, out_channels, mid_channels)
        for level in range(2, height):
            self.add_module(f"pool{level - 1}", _ceil_pool(spatial_dims))
            self.add_module(f"rebnconv{level}", REBNConv(spatial_dims, mid_channels, mid_channels))
        self.add_module(f"rebnconv{height}", REBNConv(spatial_dims, mid_channels, mid_channels, dilation=2))
        for level in range(height - 1, 1, -1):
            self.add_module(f"rebnconv{level}d", REBNConv(spatial_dims, 2 * mid_channels, mid_channels))
        self.rebnconv1d = REBNConv(spatial_dims, 2 * mid_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.rebnconvin(x)
        h = self.rebnconv1(residual)
        skips = [h]
        for level in range(2, self.height):
            h = getattr(self, f"rebnconv{level}")(getattr(self, f"pool{level - 1}")(h))
            skips.append(h)
        h = getattr(self, f"rebnconv{self.height}")(h)  # dilated, at the resolution of the last skip
        for level in range(self.height - 1, 0, -1):
            skip = skips.pop()
            h = getattr(self, f"rebnconv{level}d")(torch.cat([resize_like(h, skip, "linear"), skip], dim=1))
        return h + residual


class RSU4F(nn.Module):
    """RSU-4F: RSU-4 with dilations 1, 2, 4, 8 instead of pooling, for the coarsest stages (full resolution
    throughout). Shapes: (B, in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.rebnconvin = REBNConv(spatial_dims, in_channels, out_channels)
        self.rebnconv1 = REBNConv(spatial_dims, out_channels, mid_channels, dilation=1)
        self.rebnconv2 = REBNConv(spatial_dims, mid_channels, mid_channels, dilation=2)
        self.rebnconv3 = REBNConv(spatial_dims, mid_channels, mid_channels, dilation=4)
        self.rebnconv4 = REBNConv(spatial_dims, mid_channels, mid_channels, dilation=8)
        self.rebnconv3d = REBNConv(spatial_dims, 2 * mid_channels, mid_channels, dilation=4)
        self.rebnconv2d = REBNConv(spatial_dims, 2 * mid_channels, mid_channels, dilation=2)
        self.rebnconv1d = REBNConv(spatial_dims, 2 * mid_channels, out_channels, dilation=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.rebnconvin(x)
        h1 = self.rebnconv1(residual)
        h2 = self.rebnconv2(h1)
        h3 = self.rebnconv3(h2)
        h4 = self.rebnconv4(h3)
        h = self.rebnconv3d(torch.cat([h4, h3], dim=1))
        h = self.rebnconv2d(torch.cat([h, h2], dim=1))
        h = self.rebnconv1d(torch.cat([h, h1], dim=1))
        return h + residual


class StageSpec(NamedTuple):
    """One U²-Net stage: RSU ``height`` (4..7) or the dilated RSU-4F (``height=0``), mid and out widths."""

    height: int
    mid_channels: int
    out_channels: int


def _rsu(spatial_dims: int, spec: StageSpec, in_channels: int, width_factor: float) -> nn.Module:
    mid, out = (max(1, int(c * width_factor)) for c in (spec.mid_channels, spec.out_channels))
    if spec.height == 0:
        return RSU4F(spatial_dims, in_channels, mid, out)
    return RSU(spatial_dims, spec.height, in_channels, mid, out)


class U2Net(nn.Module):
    """U²-Net: six encoder stages (RSU-7, 6, 5, 4, 4F, 4F) joined by ceil-mode 2x pooling, five decoder stages
    (RSU-4F, 4, 5, 6, 7) fed with the bilinearly up-sampled coarser output concatenated with the encoder skip,
    a 3x3 side head on each decoder output and on the bottom stage, and a 1x1 fusion of the six side maps.

    Shapes: (B, in_channels, *S) -> fused logits (B, out_channels, *S) for any S. In training mode the
    network returns ``[fused, side1, ..., side6]``, every side up-sampled (bi-/tri-linear) to S; in eval mode
    only ``fused``.

    For ``in_channels=3, out_channels=1, width_factor=1`` it has 44,009,869 parameters (U2NetLite: 1,131,181),
    named as in the published checkpoints.
    """

    encoder_specs: tuple[StageSpec, ...] = (
        StageSpec(7, 32, 64),
        StageSpec(6, 32, 128),
        StageSpec(5, 64, 256),
        StageSpec(4, 128, 512),
        StageSpec(0, 256, 512),
        StageSpec(0, 256, 512),
    )
    # stage5d, stage4d, stage3d, stage2d, stage1d
    decoder_specs: tuple[StageSpec, ...] = (
        StageSpec(0, 256, 512),
        StageSpec(4, 128, 256),
        StageSpec(5, 64, 128),
        StageSpec(6, 32, 64),
        StageSpec(7, 16, 64),
    )

    def __init__(
        self, spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 1, width_factor: float = 1.0
    ) -> None:
        """
        Args:
            spatial_dims: 2 (published) or 3.
            in_channels: input channels.
            out_channels: output channels of every side head and of the fused output (logits).
            width_factor: scales every mid/out width; 1.0 is the published network, smaller is for CPU work.
        """
        super().__init__()
        channels = in_channels
        encoder_widths = []
        for stage, spec in enumerate(self.encoder_specs, start=1):
            if stage > 1:
                self.add_module(f"pool{stage - 1}{stage}", _ceil_pool(spatial_dims))
            block = _rsu(spatial_dims, spec, channels, width_factor)
            self.add_module(f"stage{stage}", block)
            channels = block.rebnconv1d.conv_s1.out_channels
            encoder_widths.append(channels)
        side_widths = [channels]  # stage6 output feeds side6
        for stage, spec in zip(range(5, 0, -1), self.decoder_specs):
            block = _rsu(spatial_dims, spec, channels + encoder_widths[stage - 1], width_factor)
            self.add_module(f"stage{stage}d", block)
            channels = block.rebnconv1d.conv_s1.out_channels
            side_widths.insert(0, channels)
        for index, width in enumerate(side_widths, start=1):
            side = Conv[Conv.CONV, spatial_dims](width, out_channels, kernel_size=3, padding=1)
            self.add_module(f"side{index}", side)
        self.outconv = Conv[Conv.CONV, spatial_dims](6 * out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, in_channels, *S) -> fused logits (B, out_channels, *S); in training ``[fused, side1..side6]``."""
        skips: list[torch.Tensor] = []
        h = x
        for stage in range(1, 6):
            h = getattr(self, f"stage{stage}")(h)
            skips.append(h)
            h = getattr(self, f"pool{stage}{stage + 1}")(h)
        h = self.stage6(h)
        decoded = [h]  # finest last: stage6, stage5d, ..., stage1d
        for stage in range(5, 0, -1):
            skip = skips.pop()
            h = getattr(self, f"stage{stage}d")(torch.cat([resize_like(h, skip, "linear"), skip], dim=1))
            decoded.append(h)
        sides = [
            resize_like(getattr(self, f"side{index}")(feature), x, "linear")
            for index, feature in enumerate(reversed(decoded), start=1)
        ]
        fused = self.outconv(torch.cat(sides, dim=1))
        if self.training:
            return [fused, *sides]
        return fused


class U2NetLite(U2Net):
    """U²-Net-P: the U²-Net topology with every stage at mid width 16 and out width 64 (1,131,181 parameters
    for in=3, out=1). Same arguments, shapes and outputs as :class:`U2Net`."""

    encoder_specs = (
        StageSpec(7, 16, 64),
        StageSpec(6, 16, 64),
        StageSpec(5, 16, 64),
        StageSpec(4, 16, 64),
        StageSpec(0, 16, 64),
        StageSpec(0, 16, 64),
    )
    decoder_specs = (
        StageSpec(0, 16, 64),
        StageSpec(4, 16, 64),
        StageSpec(5, 16, 64),
        StageSpec(6, 16, 64),
        StageSpec(7, 16, 64),
    )
