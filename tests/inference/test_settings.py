"""InferenceSettings: one name and one default per inference setting, from a bundle config or the command line
to predict()."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
import torch

from medseg.cli import build_parser, main
from medseg.inference import InferenceSettings, load_model, predict

FIELDS = {field.name: field.default for field in dataclasses.fields(InferenceSettings)}


def infer_flags() -> dict[str, str]:
    """``{destination: help}`` of the options of ``medseg infer``."""
    parser = build_parser()
    infer = parser._subparsers._group_actions[0].choices["infer"]
    return {action.dest: action.help or "" for action in infer._actions if action.option_strings}


def test_predict_defaults_are_the_settings_defaults():
    parameters = inspect.signature(predict).parameters
    shared = {name for name in FIELDS if name in parameters}
    assert {"sw_overlap", "mode", "precision", "slice_axis", "tta"} <= shared
    for name in shared - {"roi_size", "sw_batch_size", "normalization", "activation", "scale"}:
        assert parameters[name].default == FIELDS[name], name


@pytest.mark.parametrize("name", ["sw_overlap", "sw_batch_size", "mode", "threshold", "normalization", "tta",
                                  "precision", "fov", "scale", "upsampled_edge_erosion", "slice_axis"])
def test_each_setting_the_command_line_changes_has_a_flag_of_its_own_name(name):
    flags = infer_flags()
    assert name in flags, f"medseg infer has no --{name.replace('_', '-')}"


@pytest.mark.parametrize("name", ["sw_overlap", "mode", "threshold", "slice_axis", "scale"])
def test_the_command_line_help_shows_the_settings_default(name):
    assert f"default {FIELDS[name]}" in infer_flags()[name]


def test_the_bundles_name_their_inference_settings_as_the_fields_are_named():
    import yaml
    from pathlib import Path

    for config in sorted(Path(__file__).resolve().parents[2].glob("bundles/*/configs/inference.yaml")):
        keys = set(yaml.safe_load(config.read_text())["inference_settings"]) - {"_target_"}
        assert keys <= set(FIELDS), f"{config}: {sorted(keys - set(FIELDS))}"


def test_a_loaded_model_completes_its_settings_from_the_network_once_for_every_caller():
    from medseg.inference import LoadedModel
    from medseg.networks import UNet

    network = UNet(spatial_dims=2, in_channels=3, out_channels=2, features=(4, 8, 16))
    model = LoadedModel(network, InferenceSettings(threshold=0.3))
    assert (model.settings.in_channels, model.settings.out_channels, model.settings.spatial_dims) == (3, 2, 2)
    assert model.settings.roi_size == (256, 256) and model.settings.activation == "softmax"
    changed = model.with_settings(fov="none", roi_size=(64, 64))
    assert changed.network is network and changed.settings.threshold == 0.3
    assert (changed.settings.fov, changed.settings.roi_size, changed.settings.activation) == ("none", (64, 64), "softmax")
    with pytest.raises(ValueError, match="3 sizes but the network is 2D"):
        model.with_settings(roi_size=(8, 8, 8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.settings = InferenceSettings()  # type: ignore[misc]


def test_the_output_channels_are_what_the_network_produces_not_its_last_parameter(tmp_path):
    from monai.networks.nets import UNet as MonaiUNet

    from medseg.inference import LoadedModel

    # a head of transposed convolutions: its last weight is (C_in, C_out=1, k, k)
    network = MonaiUNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(8, 16), strides=(2,),
                        num_res_units=0).eval()
    assert [p for p in network.parameters() if p.ndim == 4][-1].shape[0] != 1
    scripted = torch.jit.script(network)
    for model in (network, scripted):
        settings = LoadedModel(model, InferenceSettings(roi_size=(32, 32))).settings
        assert (settings.in_channels, settings.out_channels, settings.activation) == (3, 1, "sigmoid")


class _SeenSizes(torch.nn.Module):
    """A 1 x 1 convolution that records each input's spatial size and refuses those below ``least``."""

    def __init__(self, least: int = 0) -> None:
        super().__init__()
        self.conv, self.least, self.sizes = torch.nn.Conv2d(3, 2, 1), least, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[2:]))
        if min(x.shape[2:]) < self.least:
            raise RuntimeError(f"input smaller than {self.least}")
        return self.conv(x)


def test_a_large_window_is_probed_small_and_at_its_own_size_only_where_the_network_refuses_small():
    from medseg.inference import LoadedModel

    quick = _SeenSizes()
    assert LoadedModel(quick, InferenceSettings(roi_size=(1024, 1024))).settings.out_channels == 2
    assert quick.sizes == [(64, 64)]  # not a 1024 x 1024 pass at start-up
    strict = _SeenSizes(least=100)
    assert LoadedModel(strict, InferenceSettings(roi_size=(128, 112))).settings.out_channels == 2
    assert strict.sizes == [(64, 64), (128, 112)]
    with pytest.raises(ValueError, match=r"fails on a window of shape \(1, 3, 80, 80\)"):
        LoadedModel(_SeenSizes(least=100), InferenceSettings(roi_size=(80, 80)))


def test_a_network_in_training_mode_is_probed_without_touching_its_statistics():
    from medseg.inference import LoadedModel
    from medseg.networks import UNet

    network = UNet(spatial_dims=2, in_channels=3, out_channels=2, features=(4, 8)).train()
    before = {name: value.clone() for name, value in network.state_dict().items()}
    assert LoadedModel(network, InferenceSettings(roi_size=(16, 16))).settings.out_channels == 2
    assert network.training
    for name, value in network.state_dict().items():
        torch.testing.assert_close(value, before[name], atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("configs_read_it", [True, False])  # False: configs of a bundle exported before the key
def test_a_bundles_widening_reaches_its_inference_settings_for_its_shipped_weights_only(tmp_path, configs_read_it):
    bundle = tmp_path / "bundle"
    assert main(["bundle", "export", "drive_vessel_unet", str(bundle)]) == 0
    if not configs_read_it:
        inference = bundle / "configs" / "inference.yaml"
        lines = inference.read_text().splitlines(keepends=True)
        inference.write_text("".join(line for line in lines if "resampled_vessel_widening" not in line))
    metadata = bundle / "configs" / "metadata.json"
    meta = json.loads(metadata.read_text())
    meta["medseg"]["resampled_vessel_widening"] = 0.28
    metadata.write_text(json.dumps(meta))
    assert load_model(bundle).settings.resampled_vessel_widening == 0.28
    other_weights = load_model(bundle, checkpoint=bundle / "models" / "model.pt")
    assert other_weights.settings.resampled_vessel_widening is None
