"""UNet: any input size in 2D and 3D, all up-sampling modes and norms, deep supervision, exact checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from medseg.networks import UNet

SMALL = (8, 16, 32, 64, 128)


@pytest.mark.parametrize("size", [(64, 64), (65, 65), (584, 565)])
@pytest.mark.parametrize("upsample", ["deconv", "bilinear", "nearest"])
def test_2d_output_has_input_size_and_every_parameter_learns(train_step, size, upsample):
    net = UNet(spatial_dims=2, in_channels=3, out_channels=2, features=SMALL, upsample=upsample)
    (logits,) = train_step(net, torch.randn(1, 3, *size))
    assert logits.shape == (1, 2, *size)


@pytest.mark.parametrize("size", [(16, 16, 16), (17, 19, 15)])
@pytest.mark.parametrize("upsample", ["deconv", "trilinear"])
def test_3d_output_has_input_size_and_every_parameter_learns(train_step, size, upsample):
    net = UNet(3, in_channels=1, out_channels=2, features=(4, 8, 16, 32), norm="instance", upsample=upsample)
    (logits,) = train_step(net, torch.randn(1, 1, *size))
    assert logits.shape == (1, 2, *size)


@pytest.mark.parametrize("norm", ["batch", "instance", None])
def test_norm_choices_and_dropout(train_step, norm):
    net = UNet(features=(4, 8, 16), norm=norm, dropout=0.2)
    (logits,) = train_step(net, torch.randn(2, 3, 33, 31))
    assert logits.shape == (2, 1, 33, 31)
    has_bias = net.input_block.conv_0.conv.bias is not None
    assert has_bias == (norm is None), "convolutions carry a bias only without a norm layer"


def test_default_widths_are_the_papers():
    net = UNet()
    widths = [net.input_block.conv_1.conv.out_channels]
    widths += [down.convs.conv_1.conv.out_channels for down in net.down_blocks]
    assert widths == [64, 128, 256, 512, 1024]
    assert [up.convs.conv_1.conv.out_channels for up in net.up_blocks] == [512, 256, 128, 64]


def test_odd_sizes_are_padded_not_cropped():
    """A 65-wide level pools to 32 and comes back as 64: the decoder pads one column instead of cropping."""
    net = UNet(features=(4, 8), upsample="nearest").eval()
    seen = {}
    net.up_blocks[0].convs.register_forward_pre_hook(lambda _m, args: seen.setdefault("cat", args[0]))
    net(torch.randn(1, 3, 65, 64))
    cat = seen["cat"]
    assert cat.shape[2:] == (65, 64)
    up_part = cat[:, 4:]  # the skip comes first, the up-sampled features after it
    assert torch.count_nonzero(up_part[..., 64, :]) == 0, "the padded row is zero; the other rows hold data"
    assert torch.count_nonzero(up_part[..., 63, :]) > 0


def test_deep_supervision_returns_side_outputs_in_training_only(train_step):
    net = UNet(features=(4, 8, 16, 32), deep_supervision=True)
    outputs = train_step(net, torch.randn(2, 3, 45, 50))
    assert len(outputs) == 3  # main + one head on each decoder level below full resolution
    assert all(out.shape == (2, 1, 45, 50) for out in outputs)
    net.eval()
    with torch.no_grad():
        assert isinstance(net(torch.randn(1, 3, 45, 50)), torch.Tensor)


def _train_pass(net: UNet, x: torch.Tensor) -> list[torch.Tensor]:
    torch.manual_seed(7)  # the same dropout masks for both networks
    outputs = net(x)
    sum(out.square().mean() for out in outputs).backward()
    return outputs


@pytest.mark.parametrize("spatial_dims,size", [(2, (37, 42)), (3, (12, 13, 11))])
def test_checkpointing_gives_identical_outputs_gradients_and_running_stats(spatial_dims, size):
    torch.manual_seed(0)
    plain = UNet(spatial_dims, 3, 2, features=(4, 8, 16, 32), dropout=0.1, deep_supervision=True)
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpointing = True
    x = torch.randn(2, 3, *size)

    expected = _train_pass(plain, x)
    actual = _train_pass(checkpointed, x)

    for out_p, out_c in zip(expected, actual, strict=True):
        torch.testing.assert_close(out_c, out_p, rtol=0, atol=1e-5)
    for (name, p), c in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(c.grad, p.grad, rtol=0, atol=1e-5, msg=f"gradient of {name}")
    # the recomputation in backward must not update batch-norm statistics a second time
    for (name, b_plain), b_ckpt in zip(plain.named_buffers(), checkpointed.buffers(), strict=True):
        torch.testing.assert_close(b_ckpt, b_plain, rtol=0, atol=1e-6, msg=f"buffer {name}")


def _bytes_saved_for_backward(net: UNet, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps from the forward pass (what activation memory consists of)."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = net(x)
    outputs.mean().backward()
    return total


def test_checkpointing_keeps_fewer_activations_for_backward():
    plain = UNet(features=(8, 16, 32, 64))
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpointing = True
    x = torch.randn(2, 3, 64, 64)
    assert _bytes_saved_for_backward(checkpointed, x) < 0.5 * _bytes_saved_for_backward(plain, x)


def test_checkpointing_is_off_in_eval_and_without_grad():
    net = UNet(features=(4, 8), checkpointing=True).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 16, 16)).shape == (1, 1, 16, 16)


@pytest.mark.parametrize("bad", [{"upsample": "bicubic"}, {"features": (8,)}, {"features": (8, 0)}])
def test_bad_configuration_is_rejected(bad):
    with pytest.raises(ValueError):
        UNet(**bad)
