"""The network as inference runs it: folded, fused, channels-last, at the precision the device computes natively."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medseg.inference import InferenceNetwork, describe_precision, native_bfloat16, resolve_precision
from medseg.inference.runtime import (
    ConvolutionReLU,
    HalvingMaxPool,
    fold_batch_norms,
    fuse_convolution_relu,
    replace_halving_max_pools,
)
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


def test_the_cpu_inference_network_of_a_unet_pools_with_halving_max_pools():
    network = UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8, 16))
    pools = sum(isinstance(m, nn.MaxPool2d) for m in network.modules())
    prepared = InferenceNetwork(network, "cpu", "float32", spatial_dims=2)
    assert pools > 0 and not any(isinstance(m, nn.MaxPool2d) for m in prepared.modules())
    assert sum(isinstance(m, HalvingMaxPool) for m in prepared.modules()) == pools
    as_trained = InferenceNetwork(network, "cpu", "float32", spatial_dims=2, fuse=False)
    assert sum(isinstance(m, nn.MaxPool2d) for m in as_trained.modules()) == pools


def test_a_batch_norm_that_does_not_follow_a_convolution_is_kept():
    network = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(4))
    fold_batch_norms(trained_like(network))
    assert [type(m) for m in network] == [nn.BatchNorm2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d]


@pytest.mark.parametrize(
    ("pool", "shape", "layout"),
    [
        (nn.MaxPool2d(2), (2, 5, 19, 24), torch.channels_last),
        (nn.MaxPool2d(2), (1, 3, 8, 7), torch.contiguous_format),
        (nn.MaxPool3d(2), (1, 4, 9, 6, 11), torch.channels_last_3d),
    ],
    ids=["2d-odd-rows", "2d-odd-columns", "3d"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_halving_max_pool_gives_the_values_of_max_pooling(pool, shape, layout, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype).contiguous(memory_format=layout)
    halved = HalvingMaxPool()(x)
    assert torch.equal(halved, pool(x))  # a maximum rounds nothing
    assert halved.is_contiguous(memory_format=layout)


def test_only_plain_2x_max_poolings_are_replaced():
    network = nn.Sequential(nn.MaxPool2d(2), nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(3), nn.MaxPool2d(2, stride=1),
                            nn.MaxPool2d(2, padding=1), nn.MaxPool3d((2, 2, 2)), nn.AvgPool2d(2))
    replace_halving_max_pools(network)
    assert [type(m) for m in network] == [HalvingMaxPool, nn.MaxPool2d, nn.MaxPool2d, nn.MaxPool2d, nn.MaxPool2d,
                                          HalvingMaxPool, nn.AvgPool2d]


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
