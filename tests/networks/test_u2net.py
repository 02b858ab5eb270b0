"""U2Net / U2NetLite: the published parameter counts and checkpoint keys, logits, outputs per mode, any size."""

from __future__ import annotations

import pytest
import torch

from medseg.networks import U2Net, U2NetLite

# The published U2NET / U2NETP (in_ch=3, out_ch=1): stage -> (block, in, mid, out); "4F" is the dilated RSU-4F.
PUBLISHED_U2NET = {
    "stage1": ("7", 3, 32, 64), "stage2": ("6", 64, 32, 128), "stage3": ("5", 128, 64, 256),
    "stage4": ("4", 256, 128, 512), "stage5": ("4F", 512, 256, 512), "stage6": ("4F", 512, 256, 512),
    "stage5d": ("4F", 1024, 256, 512), "stage4d": ("4", 1024, 128, 256), "stage3d": ("5", 512, 64, 128),
    "stage2d": ("6", 256, 32, 64), "stage1d": ("7", 128, 16, 64),
}  # fmt: skip
PUBLISHED_U2NETP = {
    "stage1": ("7", 3, 16, 64), "stage2": ("6", 64, 16, 64), "stage3": ("5", 64, 16, 64),
    "stage4": ("4", 64, 16, 64), "stage5": ("4F", 64, 16, 64), "stage6": ("4F", 64, 16, 64),
    "stage5d": ("4F", 128, 16, 64), "stage4d": ("4", 128, 16, 64), "stage3d": ("5", 128, 16, 64),
    "stage2d": ("6", 128, 16, 64), "stage1d": ("7", 128, 16, 64),
}  # fmt: skip
# inputs of side1..side6: the outputs of stage1d, stage2d, stage3d, stage4d, stage5d, stage6
SIDE_SOURCES = ("stage1d", "stage2d", "stage3d", "stage4d", "stage5d", "stage6")


def _rsu_convs(block: str, in_ch: int, mid: int, out: int) -> dict[str, tuple[int, int]]:
    """REBNCONV name -> (in, out) for a published RSU block."""
    height = 4 if block == "4F" else int(block)
    convs = {"rebnconvin": (in_ch, out), "rebnconv1": (out, mid)}
    convs |= {f"rebnconv{level}": (mid, mid) for level in range(2, height + 1)}
    convs |= {f"rebnconv{level}d": (2 * mid, mid) for level in range(height - 1, 1, -1)}
    convs["rebnconv1d"] = (2 * mid, out)
    return convs


def published_state_shapes(table: dict[str, tuple[str, int, int, int]]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for stage, spec in table.items():
        for conv, (c_in, c_out) in _rsu_convs(*spec).items():
            p = f"{stage}.{conv}"
            shapes[f"{p}.conv_s1.weight"] = (c_out, c_in, 3, 3)
            shapes[f"{p}.conv_s1.bias"] = (c_out,)
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{p}.bn_s1.{name}"] = (c_out,)
            shapes[f"{p}.bn_s1.num_batches_tracked"] = ()
    for index, stage in enumerate(SIDE_SOURCES, start=1):
        shapes[f"side{index}.weight"] = (1, table[stage][3], 3, 3)
        shapes[f"side{index}.bias"] = (1,)
    shapes["outconv.weight"] = (1, 6, 1, 1)
    shapes["outconv.bias"] = (1,)
    return shapes


@pytest.mark.parametrize("cls,n_params", [(U2Net, 44_009_869), (U2NetLite, 1_131_181)])
def test_parameter_count_is_the_published_one(cls, n_params):
    assert sum(p.numel() for p in cls(in_channels=3, out_channels=1).parameters()) == n_params


@pytest.mark.parametrize("cls,table", [(U2Net, PUBLISHED_U2NET), (U2NetLite, PUBLISHED_U2NETP)])
def test_state_dict_keys_and_shapes_are_the_published_checkpoints(cls, table):
    state = cls(in_channels=3, out_channels=1).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == published_state_shapes(table)


@pytest.mark.parametrize("with_batch_counter", [True, False])
def test_published_checkpoint_loads_strictly(with_batch_counter):
    """A checkpoint with the published names loads with strict=True, also one saved before batch norm
    tracked ``num_batches_tracked`` (the counter then starts at 0)."""
    checkpoint = {}
    for key, shape in published_state_shapes(PUBLISHED_U2NETP).items():
        if not key.endswith("num_batches_tracked"):
            checkpoint[key] = torch.randn(shape)
        elif with_batch_counter:
            checkpoint[key] = torch.tensor(5)
    net = U2NetLite()
    net.load_state_dict(checkpoint, strict=True)
    torch.testing.assert_close(net.side3.weight, checkpoint["side3.weight"], rtol=0, atol=0)
    expected_count = 5 if with_batch_counter else 0
    assert int(net.stage4d.rebnconv2d.bn_s1.num_batches_tracked) == expected_count


@pytest.mark.parametrize("size", [(64, 64), (65, 65), (584, 565)])
def test_lite_any_size_seven_outputs_in_training(train_step, size):
    net = U2NetLite(in_channels=3, out_channels=1, width_factor=0.25)
    outputs = train_step(net, torch.randn(1, 3, *size))
    assert len(outputs) == 7
    assert all(out.shape == (1, 1, *size) for out in outputs)


@pytest.mark.parametrize("size", [(64, 64), (65, 65)])
def test_full_u2net_trains_at_small_sizes(train_step, size):
    outputs = train_step(U2Net(in_channels=3, out_channels=2), torch.randn(1, 3, *size))
    assert [out.shape for out in outputs] == [(1, 2, *size)] * 7


def test_published_lite_trains_at_64(train_step):
    outputs = train_step(U2NetLite(), torch.randn(2, 3, 64, 64))
    assert len(outputs) == 7


def test_3d(train_step):
    net = U2NetLite(spatial_dims=3, in_channels=1, out_channels=2, width_factor=0.25)
    outputs = train_step(net, torch.randn(2, 1, 16, 17, 15))
    assert all(out.shape == (2, 2, 16, 17, 15) for out in outputs)


def test_fused_output_is_the_fusion_of_the_side_outputs():
    net = U2NetLite(width_factor=0.25).train()
    fused, *sides = net(torch.randn(2, 3, 40, 36))
    torch.testing.assert_close(fused, net.outconv(torch.cat(sides, dim=1)))


def test_outputs_are_logits_without_sigmoid():
    net = U2NetLite(width_factor=0.25).train()
    with torch.no_grad():
        for head in (net.side1, net.outconv):  # constant heads: a sigmoid would map -3 into (0, 1)
            head.weight.zero_()
            head.bias.fill_(-3.0)
    fused, side1, *_ = net(torch.randn(2, 3, 40, 36))
    assert torch.all(fused == -3.0) and torch.all(side1 == -3.0)


def test_eval_mode_returns_only_the_fused_output():
    net = U2NetLite(width_factor=0.25)
    x = torch.randn(2, 3, 40, 36)
    net.eval()
    with torch.no_grad():
        fused = net(x)
    assert isinstance(fused, torch.Tensor) and fused.shape == (2, 1, 40, 36)
