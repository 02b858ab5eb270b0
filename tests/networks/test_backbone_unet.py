"""BackboneUNet: ImageNet-compatible VGG16/ResNet50 encoders, unetUp decoder widths, any size, freezing."""

from __future__ import annotations

import pytest
import torch

from medseg.networks import BackboneUNet

# ImageNet VGG16: (out, in) of the 13 convolutions of ``features``, keyed by their Sequential index
VGG16_CONVS = {
    0: (64, 3), 2: (64, 64),
    5: (128, 64), 7: (128, 128),
    10: (256, 128), 12: (256, 256), 14: (256, 256),
    17: (512, 256), 19: (512, 512), 21: (512, 512),
    24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip
# ImageNet ResNet50: (blocks, bottleneck width) of layer1..layer4; expansion 4
RESNET50_LAYERS = ((3, 64), (4, 128), (6, 256), (3, 512))


def imagenet_vgg16_encoder_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for index, (out_ch, in_ch) in VGG16_CONVS.items():
        shapes[f"features.{index}.weight"] = (out_ch, in_ch, 3, 3)
        shapes[f"features.{index}.bias"] = (out_ch,)
    return shapes


def _batch_norm(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {
        **{f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")},
        f"{prefix}.num_batches_tracked": (),
    }


def imagenet_resnet50_encoder_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"conv1.weight": (64, 3, 7, 7), **_batch_norm("bn1", 64)}
    in_ch = 64
    for layer, (blocks, width) in enumerate(RESNET50_LAYERS, start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            shapes[f"{p}.conv1.weight"] = (width, in_ch, 1, 1)
            shapes.update(_batch_norm(f"{p}.bn1", width))
            shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
            shapes.update(_batch_norm(f"{p}.bn2", width))
            shapes[f"{p}.conv3.weight"] = (4 * width, width, 1, 1)
            shapes.update(_batch_norm(f"{p}.bn3", 4 * width))
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * width, in_ch, 1, 1)
                shapes.update(_batch_norm(f"{p}.downsample.1", 4 * width))
            in_ch = 4 * width
    return shapes


def _random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.randint(0, 9, ()) if s == () else torch.randn(s) for k, s in shapes.items()}


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
@pytest.mark.parametrize("size", [(64, 64), (65, 65), (584, 565)])
def test_output_has_input_size_and_every_parameter_learns(train_step, backbone, size):
    net = BackboneUNet(backbone, in_channels=3, out_channels=2, width_factor=0.125)
    (logits,) = train_step(net, torch.randn(1, 3, *size))
    assert logits.shape == (1, 2, *size)


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
def test_full_width_forward_backward_at_64(train_step, backbone):
    (logits,) = train_step(BackboneUNet(backbone), torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 1, 64, 64)


@pytest.mark.parametrize(
    "backbone,decoder_inputs,extra_stage",
    [("vgg16", [192, 384, 768, 1024], False), ("resnet50", [192, 512, 1024, 3072], True)],
)
def test_decoder_widths_follow_the_classic_unetup_layout(backbone, decoder_inputs, extra_stage):
    net = BackboneUNet(backbone)
    assert [stage.convs.conv_0.conv.in_channels for stage in net.decoder] == decoder_inputs
    assert [stage.convs.conv_1.conv.out_channels for stage in net.decoder] == [64, 128, 256, 512]
    assert (net.final_up is not None) == extra_stage


@pytest.mark.parametrize(
    "backbone,imagenet_shapes",
    [("vgg16", imagenet_vgg16_encoder_shapes), ("resnet50", imagenet_resnet50_encoder_shapes)],
)
def test_encoder_names_and_shapes_are_the_imagenet_checkpoints(backbone, imagenet_shapes):
    encoder = BackboneUNet(backbone).encoder
    assert {k: tuple(v.shape) for k, v in encoder.state_dict().items()} == imagenet_shapes()


def test_imagenet_weights_load_strictly_with_the_classifier_dropped():
    net = BackboneUNet("vgg16")
    state = _random_state(imagenet_vgg16_encoder_shapes())
    classifier = {"classifier.6.weight": torch.randn(1000, 4096), "classifier.6.bias": torch.randn(1000)}
    net.load_encoder_weights({**state, **classifier})
    torch.testing.assert_close(net.encoder.features[28].weight, state["features.28.weight"], rtol=0, atol=0)


def test_imagenet_weights_load_from_a_local_file(tmp_path):
    state = _random_state(imagenet_resnet50_encoder_shapes())
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save(state, path)
    net = BackboneUNet("resnet50", encoder_weights=path)
    torch.testing.assert_close(net.encoder.layer4[2].conv3.weight, state["layer4.2.conv3.weight"], rtol=0, atol=0)
    torch.testing.assert_close(net.encoder.bn1.running_var, state["bn1.running_var"], rtol=0, atol=0)


def test_mismatched_weights_fail_loudly(tmp_path):
    net = BackboneUNet("vgg16", width_factor=0.125)
    with pytest.raises(RuntimeError, match="size mismatch"):
        net.load_encoder_weights(_random_state(imagenet_vgg16_encoder_shapes()))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        net.load_encoder_weights(tmp_path / "missing.pth")


def test_freeze_and_unfreeze_backbone(train_step):
    net = BackboneUNet("resnet50", width_factor=0.125, freeze_encoder=True)
    net(torch.randn(2, 3, 32, 32)).mean().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for p in net.decoder.parameters())
    net.unfreeze_backbone()
    train_step(net, torch.randn(2, 3, 32, 32))
    net.freeze_backbone()
    assert not any(p.requires_grad for p in net.encoder.parameters())


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="backbone"):
        BackboneUNet("vgg19")
