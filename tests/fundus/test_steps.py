"""The fundus steps around the window pass: a photograph brought to the training scale and back, its FOV zeroed,
its edges eroded, its intensities standardised inside the FOV; run through predict_image, the path of
`medseg infer` and `medseg evaluate`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.fundus import RESAMPLED_VESSEL_WIDENING, FundusSteps, standardize_inside_fov, upsampled_edge_radius
from medseg.inference import ImageMeta, InferenceSettings, LoadedModel, predict, predict_image


def run(network: torch.nn.Module, image: np.ndarray, fov: np.ndarray | None = None, **settings) -> torch.Tensor:
    """Probabilities of ``image`` through the fundus steps and the window pass, float32, fundus model."""
    settings = {"roi_size": (32, 32), "precision": "float32", "fundus": True, "training_fov_width": 540, **settings}
    model = LoadedModel(network, InferenceSettings(**settings))
    return predict_image(model.network, image, ImageMeta(Path("photo.png")), model.settings, fov).probabilities


def recording_net(seen: list[tuple[int, ...]]) -> torch.nn.Module:
    """A network returning its first input channel as logits that appends the window sizes it sees to ``seen``
    (inference runs a copy of the network: the list is shared, not copied)."""

    class RecordingNet(torch.nn.Module):
        def forward(self, windows: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(windows.shape[2:]))
            return windows[:, :1]

    return RecordingNet()


def test_rescaled_prediction_comes_back_at_the_input_size_and_fov_zeroes_outside(net2d, image):
    fov = np.zeros(image.shape[1:], dtype=bool)
    fov[10:60, 20:70] = True
    probs = run(net2d, image, fov, scale=0.6)
    assert probs.shape == (1, 70, 90)
    assert probs[0][~fov].abs().max() == 0
    assert probs[0][fov].min() > 0


def test_auto_scale_resamples_to_the_training_width(image):
    seen = []
    fov = np.ones(image.shape[1:], dtype=bool)  # 90 pixels wide: twice the "training" width of 45
    probs = run(recording_net(seen), image, fov, roi_size=(-1, -1), scale="auto", training_fov_width=45)
    assert probs.shape == (1, 70, 90)
    assert seen == [(35, 45)]  # roi -1 means the whole (resampled) image in one window


def test_a_photograph_without_a_dark_surround_keeps_its_scale_and_the_log_says_so(caplog):
    crop = np.random.default_rng(2).integers(90, 200, (3, 15, 15), dtype=np.uint8)  # a retina crop, no surround
    seen = []
    with caplog.at_level(logging.INFO, logger="medseg.fundus"):
        probs = run(recording_net(seen), crop, None, roi_size=(-1, -1), scale="auto", upsampled_edge_erosion=True)
    assert probs.shape == (1, 15, 15)
    assert seen == [(15, 15)]  # neither enlarged 36x nor eroded as if shrunk
    assert "no disc found" in caplog.text and "scale 1 " in caplog.text


def test_a_given_factor_still_scales_a_photograph_without_a_surround():
    crop = np.random.default_rng(2).integers(90, 200, (3, 16, 16), dtype=np.uint8)
    seen = []
    run(recording_net(seen), crop, None, roi_size=(-1, -1), scale=2.0)
    assert seen == [(32, 32)]


class _MarksTouchedPixels(torch.nn.Module):
    """A "network" labelling as DRIVE's annotators do: vessel wherever a vessel covers any of its pixel."""

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return 1000 * (windows[:, :1] - 0.02)


@pytest.mark.parametrize("left, width", [(30, 8), (31, 8), (29, 9), (30, 5)])
def test_upsampled_edge_erosion_narrows_a_vessel_predicted_on_a_4x_coarser_grid(left, width):
    image = np.zeros((1, 64, 96), np.float32)
    image[:, :, left : left + width] = 1  # a vertical vessel
    coarse, eroded = (run(_MarksTouchedPixels(), image, roi_size=(-1, -1), normalization="none", scale=0.25,
                          upsampled_edge_erosion=erosion) for erosion in (False, True))
    widths = [int((probs[0, 32] >= 0.5).sum()) for probs in (coarse, eroded)]
    # a pixel of the 4x coarser grid puts each edge up to 4 pixels out, 2 on average; the erosion takes back
    # (4 - 1) / 2 = 1.5 on each side
    assert 2 <= widths[0] - widths[1] <= 4
    assert widths[1] >= width
    assert (eroded <= coarse).all()


@pytest.mark.parametrize("scale", ["none", 1.0, 2.0])
def test_upsampled_edge_erosion_leaves_an_image_not_shrunk_as_it_is(net2d, image, scale):
    torch.testing.assert_close(run(net2d, image, scale=scale, upsampled_edge_erosion=True),
                               run(net2d, image, scale=scale), atol=0, rtol=0)


def test_upsampled_edge_erosion_refuses_what_it_cannot_erode_before_any_window_runs(net2d, image):
    class MustNotRun(torch.nn.Module):
        def forward(self, windows: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the network ran")

    settings = InferenceSettings(fundus=True, scale=0.5, activation="softmax", upsampled_edge_erosion=True)
    with pytest.raises(ValueError, match="sigmoid"):
        FundusSteps.plan(torch.as_tensor(image), settings, None)
    # no shrinking, nothing to erode: a softmax network runs as usual
    assert run(net2d, image, activation="softmax", upsampled_edge_erosion=True, scale="none").shape[0] == 1


def _fundus(height: int = 80, width: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """A bright noisy disc on a black surround, (3, H, W) uint8, and its (H, W) FOV."""
    yy, xx = np.mgrid[:height, :width]
    fov = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (0.45 * height) ** 2
    pixels = np.random.default_rng(3).integers(60, 220, (3, height, width))
    return np.where(fov, pixels, 0).astype(np.uint8), fov


def test_standardize_fov_sees_what_the_training_transform_gives(net2d):
    image, fov = _fundus()
    as_float = torch.from_numpy(image).float() / 255
    trained_on = standardize_inside_fov(as_float.clone(), torch.from_numpy(fov))
    expected = predict(net2d, trained_on, roi_size=(32, 32), normalization="none", precision="float32")
    expected[:, ~torch.from_numpy(fov)] = 0
    torch.testing.assert_close(run(net2d, as_float.numpy(), fov, normalization="standardize_fov", scale="none"),
                               expected, atol=1e-5, rtol=0)


def test_standardize_fov_ignores_the_surround_and_estimates_the_fov_when_none_is_given(net2d):
    image, fov = _fundus()
    wider = np.zeros((3, 120, 140), dtype=np.uint8)  # the same retina with more black surround
    wider[:, 20:100, 25:115] = image
    inside = run(net2d, image, normalization="standardize_fov", scale="none")[:, fov]
    wider_inside = run(net2d, wider, normalization="standardize_fov", scale="none")[:, 20:100, 25:115][:, fov]
    # windows see other neighbours near the border of a smaller frame; the statistics are the same
    assert (inside - wider_inside).abs().median() < 1e-3


@pytest.mark.parametrize("widening", [None, 0.0, 0.2])
def test_edges_resampled_up_are_eroded_by_the_weights_own_widening_else_the_librarys(widening):
    settings = InferenceSettings(fundus=True, scale=0.5, upsampled_edge_erosion=True, activation="sigmoid",
                                 resampled_vessel_widening=widening)
    steps = FundusSteps.plan(torch.zeros(3, 40, 40), settings, np.ones((40, 40), dtype=bool))
    expected = RESAMPLED_VESSEL_WIDENING if widening is None else widening
    assert steps.erosion_radius == pytest.approx(upsampled_edge_radius(0.5, expected))
