"""Every network: built by name and from a MONAI bundle config, traceable, usable with sliding-window inference."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import sliding_window_inference

from medseg.networks import BackboneUNet, U2Net, U2NetLite, UNet, get_network

# CPU-sized configurations of each registered network, as a config file would give them: id -> (name, kwargs)
SMALL_NETWORKS = {
    "unet": ("unet", {"features": (8, 16, 32, 64, 128)}),
    "unet_deep_supervision": ("unet", {"features": (8, 16, 32), "deep_supervision": True, "upsample": "bilinear"}),
    "backbone_unet_vgg16": ("backbone_unet", {"backbone": "vgg16", "width_factor": 0.125}),
    "backbone_unet_resnet50": ("backbone_unet", {"backbone": "resnet50", "width_factor": 0.125}),
    "u2net": ("u2net", {"width_factor": 0.125}),
    "u2net_lite": ("u2net_lite", {"width_factor": 0.25}),
}


def build(key: str) -> torch.nn.Module:
    name, kwargs = SMALL_NETWORKS[key]
    return get_network(name, in_channels=3, out_channels=2, **kwargs)


@pytest.mark.parametrize(
    "name,cls", [("unet", UNet), ("backbone_unet", BackboneUNet), ("u2net", U2Net), ("u2net_lite", U2NetLite)]
)
def test_get_network_builds_the_class_by_name(name, cls):
    kwargs = {"width_factor": 0.125} if name != "unet" else {"features": (4, 8)}
    assert type(get_network(name, **kwargs)) is cls


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="u2net_lite"):
        get_network("unet++")


def test_classes_are_bundle_targets():
    config = {
        "network_def": {
            "_target_": "medseg.networks.UNet",
            "spatial_dims": 2,
            "in_channels": 3,
            "out_channels": 1,
            "features": [8, 16, 32],
            "norm": "instance",
            "upsample": "nearest",
        },
        "lite": {"_target_": "medseg.networks.U2NetLite", "width_factor": 0.25},
    }
    parser = ConfigParser(config)
    assert isinstance(parser.get_parsed_content("network_def"), UNet)
    assert isinstance(parser.get_parsed_content("lite"), U2NetLite)


@pytest.mark.parametrize("key", SMALL_NETWORKS)
def test_trace_in_eval_mode_matches_eager(key):
    net = build(key).eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        eager = net(x)
        traced = torch.jit.trace(net, x, check_trace=False)
        torch.testing.assert_close(traced(x), eager, rtol=1e-4, atol=1e-5)
    assert isinstance(eager, torch.Tensor) and eager.shape == (1, 2, 65, 65)


@pytest.mark.parametrize("key", SMALL_NETWORKS)
def test_sliding_window_inference_on_a_drive_sized_image(key):
    net = build(key).eval()
    with torch.no_grad():
        logits = sliding_window_inference(torch.randn(1, 3, 584, 565), (128, 128), 4, net, overlap=0.25)
    assert logits.shape == (1, 2, 584, 565)
    assert torch.isfinite(logits).all()
