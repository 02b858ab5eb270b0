"""infer_files(): the file loop shared by ``medseg infer`` and the bundles' inference.yaml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.inference import (
    DEFAULT_PROBABILITY_DTYPE,
    ImageMeta,
    InferenceFailed,
    InferenceSettings,
    LoadedModel,
    infer_files,
    network_input,
    read_image,
    write_probabilities,
)
from medseg.metrics import FOVVesselMetrics
from medseg.networks import UNet


@pytest.fixture
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8, 16)).eval()


def write_png(path: Path, seed: int) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def test_summary_lists_outputs_and_failures_and_raises_only_when_asked(network, tmp_path):
    good = write_png(tmp_path / "good.png", 1)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    settings = InferenceSettings(roi_size=(32, 32))
    summary = infer_files(LoadedModel(network, settings), [broken, good, tmp_path / "missing.png"], tmp_path / "out",
                          progress=False)
    assert summary.written == {good: {"mask": tmp_path / "out" / "good_mask.png",
                                      "overlay": tmp_path / "out" / "good_overlay.png"}}
    assert all(path.is_file() for path in summary.written[good].values())
    assert [failure.split(":")[0] for failure in summary.failures] == [str(tmp_path / "missing.png"), str(broken)]
    with pytest.raises(InferenceFailed, match="1 input\\(s\\) written") as raised:
        summary.raise_for_failures()
    assert str(broken) in str(raised.value) and "missing.png" in str(raised.value)


def test_settings_left_open_are_completed_from_the_network(network, tmp_path):
    image = write_png(tmp_path / "a.png", 2)
    model = LoadedModel(network, InferenceSettings(roi_size=(32, 32), threshold=0.0))
    summary = infer_files(model, [image], tmp_path / "out", progress=False)
    assert summary.raise_for_failures() is summary
    # sigmoid chosen for one output channel: every probability is >= 0, so threshold 0 keeps every pixel
    assert (np.asarray(Image.open(tmp_path / "out" / "a_mask.png")) == 255).all()


def test_a_scale_factor_needs_a_fundus_model(network, tmp_path):
    with pytest.raises(ValueError, match="fundus models only"):
        LoadedModel(network).with_settings(scale=2.0)
    assert LoadedModel(network).with_settings(scale=2.0, fundus=True, training_fov_width=540).settings.scale == 2.0


@pytest.mark.parametrize("scale", ["large", "0", -1.5])
def test_a_scale_is_auto_none_or_a_positive_factor(scale):
    with pytest.raises(ValueError, match="scale must be"):
        InferenceSettings(scale=scale)
    assert InferenceSettings(scale="1.5", fundus=True).scale == 1.5  # as the command line gives it


def test_probability_files_written_by_default_keep_the_metrics_of_the_probabilities_in_memory(network, tmp_path):
    generator = torch.Generator().manual_seed(0)
    # most probabilities of a vessel map are tiny: 8 bits would tie every one under 1/255
    probabilities = torch.rand(1, 120, 130, generator=generator) ** 6
    labels = (torch.rand(1, 120, 130, generator=generator) < probabilities * 1.5).float()
    path = tmp_path / "image_prob.png"
    write_probabilities(path, probabilities, ImageMeta(tmp_path / "image.png"), DEFAULT_PROBABILITY_DTYPE)
    stored = np.asarray(Image.open(path))
    assert stored.dtype == np.uint16
    read_back = torch.as_tensor(stored.astype(np.float32) / 65535)[None]
    assert (read_back - probabilities).abs().max() <= 0.5 / 65535 + 1e-7
    in_memory, from_file = FOVVesselMetrics(), FOVVesselMetrics()
    in_memory.update(probabilities, labels, torch.ones_like(labels))
    from_file.update(read_back, labels, torch.ones_like(labels))
    for name, value in in_memory.compute().items():
        assert from_file.compute()[name] == pytest.approx(value, abs=1e-4), name


def test_a_green_channel_network_runs_on_colour_photographs_whatever_the_metadata_declares(tmp_path):
    green = UNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 8)).eval()
    # a bundle's metadata declares its shipped network's 3 channels; a checkpoint trained on the green channel has 1
    model = LoadedModel(green, InferenceSettings(preprocessing="green", in_channels=3))
    assert model.settings.in_channels == 1
    summary = infer_files(model, [write_png(tmp_path / "a.png", 3)], tmp_path / "out", progress=False)
    assert summary.raise_for_failures() is summary and (tmp_path / "out" / "a_mask.png").is_file()


def test_a_clahe_network_sees_in_file_inference_what_it_was_trained_on(synthetic_drive_template):
    from medseg.data import drive_records, vessel_transforms

    record = drive_records(synthetic_drive_template, "test")[0]
    trained_on = vessel_transforms("eval", preprocessing="clahe")(record)["image"]
    image, meta = read_image(Path(record["image"]))
    settings = InferenceSettings(preprocessing="clahe", in_channels=1)
    inputs = network_input(image, settings, str(meta.path))
    assert inputs.shape == (1, 584, 565) and inputs.dtype == np.float32
    np.testing.assert_allclose(inputs, trained_on.numpy(), atol=1e-6)


def test_a_clahe_network_runs_on_colour_photographs(tmp_path):
    clahe = UNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 8)).eval()
    model = LoadedModel(clahe, InferenceSettings(preprocessing="clahe", normalization="standardize"))
    summary = infer_files(model, [write_png(tmp_path / "a.png", 4)], tmp_path / "out", progress=False)
    assert summary.raise_for_failures() is summary and (tmp_path / "out" / "a_mask.png").is_file()


def _fundus_rgba(path: Path, surround: int) -> tuple[Path, np.ndarray]:
    """A 64 x 64 RGBA photograph whose opaque disc (the alpha) is the FOV; the surround's RGB is ``surround``
    (bright: nothing but the alpha tells where the retina ends). Returns the file and its disc (H, W) bool."""
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 26**2
    rgb = np.random.default_rng(4).integers(80, 200, (64, 64, 3), dtype=np.uint8)
    rgb[~disc] = surround
    Image.fromarray(np.dstack([rgb, np.where(disc, 255, 0).astype(np.uint8)]), mode="RGBA").save(path)
    return path, disc


def test_an_alpha_channel_that_is_a_mask_is_the_fov_and_the_log_says_so(network, tmp_path, caplog):
    path, disc = _fundus_rgba(tmp_path / "exported.png", surround=230)
    image, meta = read_image(path)
    assert image.shape == (3, 64, 64) and meta.alpha is not None
    settings = InferenceSettings(roi_size=(32, 32), fundus=True, training_fov_width=52, fov="auto")
    with caplog.at_level("INFO", logger="medseg.inference"):
        summary = infer_files(LoadedModel(network, settings), [path], tmp_path / "out", progress=False,
                              save_prob="float16")
    assert not summary.failures
    probabilities = np.load(summary.written[path]["probabilities"]).reshape(64, 64)
    assert (probabilities[~disc] == 0).all() and (probabilities[disc] > 0).all()
    assert "alpha channel marks the FOV" in caplog.text


def test_a_fully_opaque_alpha_is_no_fov(tmp_path):
    from medseg.fundus import fov_from_alpha

    assert fov_from_alpha(np.full((8, 8), 255, np.uint8)) is None
    assert fov_from_alpha(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)) is None


def test_a_16_bit_photograph_is_scaled_by_its_bit_depth_where_the_network_scales_by_255(network, tmp_path):
    grey8 = np.random.default_rng(5).integers(0, 256, (40, 50), dtype=np.uint8)
    Image.fromarray(grey8).save(tmp_path / "eight.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # the same picture, 16 bits
    model = LoadedModel(network, InferenceSettings(roi_size=(32, 32), normalization="scale255", precision="float32"))
    summary = infer_files(model, [tmp_path / "eight.png", tmp_path / "sixteen.png"], tmp_path / "out",
                          progress=False, save_prob="float16")
    eight, sixteen = (np.load(summary.written[tmp_path / name]["probabilities"]).astype(np.float32)
                      for name in ("eight.png", "sixteen.png"))
    np.testing.assert_allclose(sixteen, eight, atol=2e-3)
