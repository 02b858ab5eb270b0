"""The network as inference runs it: folded, fused, channels-last, at the precision the device computes natively."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medseg.inference import InferenceNetwork, describe_precision, native_bfloat16, resolve_precision
from medseg.inference.runtime import ConvolutionReLU, fold_batch_norms, fuse_convolution_relu
from medseg.networks import U2NetLite, UNet, ensemble_of


def trained_like(network: nn.Module) -> nn.Module:
    """``network`` with running statistics and affine parameters away from their initial values."""
    generator = torch.Generator().manual_seed(0)
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.uniform_(-0.2, 0.2, generator=generator)
    return network.eval()


@pytest.mark.parametrize(
    ("network", "shape"),
    [
        (UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8, 16)), (2, 3, 37, 45)),
        (UNet(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 8)), (1, 1, 12, 16, 10)),
        (ensemble_of(UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8)), 2), (1, 3, 32, 32)),
        (U2NetLite(in_channels=3, out_channels=1), (1, 3, 64, 64)),
    ],
    ids=["unet2d", "unet3d", "ensemble", "u2net-lite"],
)
def test_float32_inference_network_computes_what_the_trained_network_does(network, shape):
    torch.manual_seed(0)
    network = trained_like(network)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    x = torch.randn(shape)
    with torch.no_grad():
        expected = network(x)
        expected = expected[0] if isinstance(expected, (list, tuple)) else expected
        prepared = InferenceNetwork(network, "cpu", "float32", spatial_dims=len(shape) - 2)
        torch.testing.assert_close(prepared(x), expected, atol=1e-4, rtol=1e-4)
    assert all(torch.equal(value, network.state_dict()[name]) for name, value in before.items())  # a copy


def test_batch_norms_after_convolutions_are_folded_and_relus_fused():
    network = trained_like(UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8, 16)))
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    relus = sum(isinstance(m, nn.ReLU) for m in network.modules())
    assert norms == relus > 0  # MONAI's Convolution: conv, norm, ReLU
    fuse_convolution_relu(fold_batch_norms(network))
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in network.modules())
    assert sum(isinstance(m, ConvolutionReLU) for m in network.modules()) == relus


def test_a_batch_norm_that_does_not_follow_a_convolution_is_kept():
    network = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(4))
    fold_batch_norms(trained_like(network))
    assert [type(m) for m in network] == [nn.BatchNorm2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d]


def test_fused_convolution_relu_equals_the_two_layers():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, padding=1, stride=2)
    x = torch.randn(2, 5, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(ConvolutionReLU(conv)(x), torch.relu(conv(x)), atol=1e-5, rtol=1e-5)


def test_pytorch_still_has_the_private_calls_medseg_relies_on():
    # oneDNN's fused convolution (what torch.compile emits for conv + ReLU) and the CPU feature probes: if a
    # PyTorch release drops them, this fails instead of inference silently running unfused or in float32
    assert hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    assert callable(torch.cpu._is_amx_tile_supported) and callable(torch.cpu._is_avx512_bf16_supported)


def test_auto_precision_is_bfloat16_exactly_where_the_device_computes_it_natively():
    native = native_bfloat16("cpu")
    assert resolve_precision("auto", "cpu") == ("bfloat16" if native else "float32")
    expected = f"bfloat16 (auto: {native} on cpu)" if native else "float32 (auto: no native bfloat16 on cpu)"
    assert describe_precision("auto", "cpu") == expected
    assert describe_precision("float32", "cpu") == "float32 on cpu"
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16"):
        resolve_precision("float16", "cpu")


def test_bfloat16_network_returns_float32_logits_close_to_float32():
    torch.manual_seed(0)
    network = trained_like(UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8)))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        logits = InferenceNetwork(network, "cpu", "bfloat16", spatial_dims=2)(x)
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, network(x), atol=0.1, rtol=0.05)
