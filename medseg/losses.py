"""Training losses. MONAI covers most of them; this module adds only what it lacks.

Which loss for which task (all take logits):

- Vessels (one sigmoid channel): ``monai.losses.DiceCELoss(sigmoid=True)``, i.e. soft Dice + BCE on logits.
- U2-Net deep supervision (in train mode the network returns ``[fused, side1, ..., side6]``, all at
  the input size): ``monai.losses.DeepSupervisionLoss(DiceCELoss(sigmoid=True), weight_mode="same")``
  sums the loss of the fused map and of every side output with equal weights, the fused multi-output
  loss of the U2-Net paper; in eval mode the network returns one tensor, which the same object accepts.
- CamVid (11 classes, void = 11): ``DiceCEIgnoreLoss`` below, because ``monai.losses.DiceCELoss`` has no
  ``ignore_index`` (its ``DiceLoss`` has one, ``torch.nn.CrossEntropyLoss`` too; this joins the two).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceLoss
from torch import nn

__all__ = ["DiceCEIgnoreLoss"]


class DiceCEIgnoreLoss(nn.Module):
    """Soft multi-class Dice (softmax) plus cross-entropy on logits, pixels labelled ``ignore_index`` excluded
    from both terms, with optional class weights.

    Args:
        ignore_index: label value that contributes nothing (CamVid void: 11).
        weight: optional per-class weights (length C) for both the Dice and the cross-entropy terms.
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.

    Shapes: ``input`` B x C x H x W logits, ``target`` B x 1 x H x W class indices in ``0 .. C-1`` or
    ``ignore_index``. Returns a scalar. The loss is computed in float32 whatever the autocast dtype, as
    Dice sums over all pixels lose precision in bfloat16.
    """

    def __init__(
        self,
        ignore_index: int = 11,
        weight: Sequence[float] | torch.Tensor | None = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
    ) -> None:
        super().__init__()
        weight = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, ignore_index=ignore_index, weight=weight)
        self.cross_entropy = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != input.ndim or target.shape[1] != 1:
            raise ValueError(
                f"target must be B x 1 x H x W class indices for input {tuple(input.shape)}, got {tuple(target.shape)}."
            )
        input = input.float()
        with torch.autocast(device_type=input.device.type, enabled=False):
            dice = self.dice(input, target)
            cross_entropy = self.cross_entropy(input, target[:, 0].long())
        return self.lambda_dice * dice + self.lambda_ce * cross_entropy
