"""Losses: MONAI's Dice+BCE and deep supervision as wired for U2-Net, and the void-ignoring CamVid loss."""

import pytest
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

from medseg.losses import DiceCEIgnoreLoss

VOID = 11


def vessel_batch(seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Seven logit maps (U2-Net fused + 6 sides) and a binary label, 2 x 1 x 16 x 16."""
    generator = torch.Generator().manual_seed(seed)
    label = (torch.rand(2, 1, 16, 16, generator=generator) < 0.3).float()
    outputs = [torch.randn(2, 1, 16, 16, generator=generator) for _ in range(7)]
    return outputs, label


def camvid_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 11, 16, 16, generator=generator)
    label = torch.randint(0, 12, (2, 1, 16, 16), generator=generator)  # 12 = 11 classes + void
    return logits, label


def test_deep_supervision_loss_is_the_equal_weight_sum_over_fused_and_sides():
    outputs, label = vessel_batch()
    dice_bce = DiceCELoss(sigmoid=True)
    loss = DeepSupervisionLoss(dice_bce, weight_mode="same")(outputs, label)
    assert loss.item() == pytest.approx(sum(dice_bce(output, label).item() for output in outputs), rel=1e-6)


def test_deep_supervision_loss_takes_the_single_eval_mode_output():
    outputs, label = vessel_batch()
    dice_bce = DiceCELoss(sigmoid=True)
    assert DeepSupervisionLoss(dice_bce, weight_mode="same")(outputs[0], label) == dice_bce(outputs[0], label)


def test_void_pixels_do_not_change_the_camvid_loss():
    logits, label = camvid_batch()
    void = (label == VOID).expand_as(logits)
    assert void.any()
    changed = torch.where(void, torch.randn_like(logits) * 10, logits)
    loss = DiceCEIgnoreLoss(ignore_index=VOID)
    assert loss(changed, label).item() == pytest.approx(loss(logits, label).item(), rel=1e-6)


def test_void_pixels_get_no_gradient():
    logits, label = camvid_batch()
    logits.requires_grad_(True)
    DiceCEIgnoreLoss(ignore_index=VOID)(logits, label).backward()
    void = (label == VOID).expand_as(logits)
    assert torch.all(logits.grad[void] == 0)
    assert torch.any(logits.grad[~void] != 0)


def test_without_void_the_camvid_loss_equals_monai_dice_ce():
    logits, label = camvid_batch()
    label = label.clamp(max=VOID - 1)
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, label)
    assert DiceCEIgnoreLoss(ignore_index=VOID)(logits, label).item() == pytest.approx(expected.item(), rel=1e-6)


def test_camvid_loss_rejects_a_one_hot_target():
    logits, label = camvid_batch()
    with pytest.raises(ValueError, match="B x 1 x H x W class indices"):
        DiceCEIgnoreLoss()(logits, torch.zeros_like(logits))


def bf16_leaf(logits: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(logits, list):
        return [bf16_leaf(t) for t in logits]
    return logits.bfloat16().requires_grad_(True)


@pytest.mark.parametrize("name", ["dice_bce", "deep_supervision", "camvid"])
def test_losses_run_under_bfloat16_autocast_on_bfloat16_logits(name):
    outputs, label = vessel_batch()
    cases = {
        "dice_bce": (DiceCELoss(sigmoid=True), outputs[0], label),
        "deep_supervision": (DeepSupervisionLoss(DiceCELoss(sigmoid=True), weight_mode="same"), outputs, label),
        "camvid": (DiceCEIgnoreLoss(ignore_index=VOID), *camvid_batch()),
    }
    loss_fn, logits, target = cases[name]
    bf16_logits = bf16_leaf(logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(bf16_logits, target)
    loss.backward()
    assert loss.item() == pytest.approx(loss_fn(logits, target).item(), rel=2e-2)
    for leaf in bf16_logits if isinstance(bf16_logits, list) else [bf16_logits]:
        assert torch.isfinite(leaf.grad.float()).all()
