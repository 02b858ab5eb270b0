"""U-Net with an ImageNet-style VGG16 or ResNet50 encoder and ``unetUp`` decoder stages (2D)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
from monai.networks.layers.factories import Act, Conv, Pool
from monai.networks.nets.resnet import ResNet, get_inplanes

from medseg.networks.blocks import DoubleConv, resize_like

__all__ = ["BackboneUNet", "ResNet50Encoder", "UnetUp", "VGG16Encoder"]

# VGG16 "D" configuration: conv widths, "M" = 2x2 max pooling. The indices of the resulting Sequential
# (conv at 0, 2, 5, 7, 10, ...) are the ``features.N`` keys of ImageNet VGG16 checkpoints.
_VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512
)  # fmt: skip
# ImageNet classifier weights that a segmentation encoder does not hold
_CLASSIFIER_PREFIXES = ("classifier.", "fc.")


class VGG16Encoder(nn.Module):
    """The 13 convolutions of VGG16 (``features.N.weight``/``bias``), tapped after the last ReLU of each stage.

    Shapes: (B, in_channels, H, W) -> five maps of ``out_channels`` = (64, 128, 256, 512, 512) x width_factor
    at H/1, H/2, H/4, H/8, H/16 (floor). The classifier and the fifth pooling are not part of the encoder.
    """

    def __init__(self, in_channels: int = 3, width_factor: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        taps: list[int] = []
        widths: list[int] = []
        channels = in_channels
        for item in _VGG16_LAYOUT:
            if item == "M":
                taps.append(len(layers) - 1)  # the ReLU before each pooling closes a stage
                widths.append(channels)
                layers.append(Pool[Pool.MAX, 2](kernel_size=2, stride=2))
            else:
                width = max(1, int(item * width_factor))
                layers += [Conv[Conv.CONV, 2](channels, width, kernel_size=3, padding=1), Act[Act.RELU](inplace=True)]
                channels = width
        taps.append(len(layers) - 1)
        widths.append(channels)
        self.features = nn.Sequential(*layers)
        self.taps = tuple(taps)
        self.out_channels = tuple(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps: list[torch.Tensor] = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                maps.append(x)
        return maps


class ResNet50Encoder(ResNet):
    """MONAI's 2D ResNet50 laid out like the ImageNet checkpoint (7x7 stride-2 stem, bottleneck blocks, 1x1
    projection shortcuts without bias, no ``fc``), returning the stem and the four stage outputs.

    Shapes: (B, in_channels, H, W) -> five maps of ``out_channels`` = (64, 256, 512, 1024, 2048) x width_factor
    at H/2, H/4, H/8, H/16, H/32 (ceil).
    """

    def __init__(self, in_channels: int = 3, width_factor: float = 1.0) -> None:
        super().__init__(
            block="bottleneck",
            layers=[3, 4, 6, 3],
            block_inplanes=get_inplanes(),
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            widen_factor=width_factor,
            feed_forward=False,
            bias_downsample=False,
        )
        del self.avgpool  # pooled classification features are not used
        stem = self.conv1.out_channels
        self.out_channels = (stem, *(layer[-1].conv3.out_channels for layer in self.stages()))

    def stages(self) -> tuple[nn.Module, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self.bn1(self.conv1(x)))
        maps = [x]
        x = self.maxpool(x)
        for stage in self.stages():
            x = stage(x)
            maps.append(x)
        return maps


class UnetUp(nn.Module):
    """Decoder stage: nearest 2x up-sampling of the coarser map to the skip's size, concatenation (skip first),
    two 3x3 convolutions with ReLU.

    Shapes: ``skip`` (B, C_s, H, W), ``coarse`` (B, C_c, ~H/2, ~W/2) -> (B, out_channels, H, W),
    with ``in_channels = C_s + C_c``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = DoubleConv(2, in_channels, out_channels, norm=None)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        # resizing to the skip's size instead of a fixed x2 keeps odd sizes aligned
        return self.convs(torch.cat([skip, resize_like(coarse, skip, "nearest")], dim=1))


class BackboneUNet(nn.Module):
    """Encoder-decoder with a VGG16 or ResNet50 encoder and four :class:`UnetUp` stages of widths
    (64, 128, 256, 512) x width_factor. Decoder input widths are 192/384/768/1024 for VGG16 and
    192/512/1024/3072 for ResNet50 (at width_factor 1). ResNet50 starts at half resolution, so an extra stage
    (bilinear up-sampling to the input size, two 3x3 convolutions with ReLU) precedes the head.

    Shapes: (B, in_channels, H, W) -> logits (B, out_channels, H, W) for any H, W.

    The encoder's ``state_dict`` uses the ImageNet checkpoint names (``features.N.*`` for VGG16; ``conv1``,
    ``bn1``, ``layer1``..``layer4`` for ResNet50), so :meth:`load_encoder_weights` loads such a file strictly.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        in_channels: int = 3,
        out_channels: int = 1,
        width_factor: float = 1.0,
        encoder_weights: str | Path | None = None,
        freeze_encoder: bool = False,
    ) -> None:
        """
        Args:
            backbone: ``"vgg16"`` or ``"resnet50"``.
            in_channels: input channels (3 to use ImageNet weights).
            out_channels: output channels (logits).
            width_factor: scales every encoder and decoder width; 1.0 for ImageNet weights, smaller for CPU work.
            encoder_weights: optional path of a local ImageNet checkpoint (a state dict) for the encoder.
            freeze_encoder: start with the encoder frozen (see :meth:`freeze_backbone`).
        """
        super().__init__()
        encoders = {"vgg16": VGG16Encoder, "resnet50": ResNet50Encoder}
        if backbone not in encoders:
            raise ValueError(f"backbone must be one of {sorted(encoders)}, got {backbone!r}.")
        self.backbone = backbone
        self.encoder = encoders[backbone](in_channels, width_factor)
        skip_widths = self.encoder.out_channels
        decoder_widths = tuple(max(1, int(w * width_factor)) for w in (64, 128, 256, 512))
        # stage i joins encoder map i with the output of stage i + 1 (the deepest one with the last encoder map)
        coarse_widths = (*decoder_widths[1:], skip_widths[4])
        self.decoder = nn.ModuleList(
            UnetUp(skip + coarse, out) for skip, coarse, out in zip(skip_widths[:4], coarse_widths, decoder_widths)
        )
        # ResNet50 maps start at H/2: one more stage, after up-sampling to the input size
        self.final_up: DoubleConv | None = None
        if backbone == "resnet50":
            self.final_up = DoubleConv(2, decoder_widths[0], decoder_widths[0], norm=None)
        self.head = Conv[Conv.CONV, 2](decoder_widths[0], out_channels, kernel_size=1)
        if encoder_weights is not None:
            self.load_encoder_weights(encoder_weights)
        if freeze_encoder:
            self.freeze_backbone()

    def load_encoder_weights(self, weights: str | Path | Mapping[str, torch.Tensor]) -> None:
        """Load ImageNet weights (a path to a ``torch.save``-d state dict, or the dict) into the encoder.

        Classifier entries (``classifier.*``, ``fc.*``) are dropped; every other key must match the encoder's
        names and shapes exactly (strict loading), otherwise a ``RuntimeError``/``ValueError`` names the problem.
        """
        if isinstance(weights, (str, Path)):
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"encoder weights file not found: {path}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, Mapping):
                raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        else:
            state = weights
        encoder_state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
        self.encoder.load_state_dict(encoder_state, strict=True)

    def freeze_backbone(self) -> None:
        """Stop gradient updates of the encoder parameters (batch-norm running statistics of the ResNet50
        encoder still follow the data in training mode)."""
        self.encoder.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        """Train the encoder parameters again."""
        self.encoder.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> logits (B, out_channels, H, W)."""
        maps = self.encoder(x)
        h = maps[4]
        for index in range(3, -1, -1):
            h = self.decoder[index](maps[index], h)
        if self.final_up is not None:
            h = self.final_up(resize_like(h, x, "linear"))
        return self.head(h)
