"""predict(): the one inference path, checked against MONAI's plain sliding window and against itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from medseg.inference import fundus_scale, predict, resolve_precision
from medseg.inference.predict import erode
from medseg.networks import UNet


@pytest.fixture
def net2d() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8, 16)).eval()


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 70, 90), dtype=np.uint8)


def test_uint8_windows_match_monai_on_the_float_image(net2d):
    image = np.random.default_rng(1).integers(0, 256, (3, 70, 90), dtype=np.uint8)
    probs = predict(net2d, image, roi_size=(32, 32), sw_batch_size=3, normalization="scale255", precision="float32")
    with torch.no_grad():
        expected = sliding_window_inference(
            torch.from_numpy(image)[None].float() / 255, (32, 32), 3, lambda w: torch.sigmoid(net2d(w)), mode="gaussian"
        )[0]
    assert probs.shape == (1, 70, 90)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


def test_an_image_smaller_than_the_window_runs_in_one_pass_at_its_own_size(net2d):
    image = np.random.default_rng(1).integers(0, 256, (3, 20, 50), dtype=np.uint8)
    probs = predict(net2d, image, roi_size=(32, 64), normalization="scale255", precision="float32")
    with torch.no_grad():
        expected = torch.sigmoid(net2d(torch.from_numpy(image)[None].float() / 255))[0]
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


def test_bfloat16_keeps_the_float32_mask_and_auto_follows_the_device(net2d, image):
    reference = predict(net2d, image, roi_size=(32, 32), precision="float32")
    fast = predict(net2d, image, roi_size=(32, 32), precision="bfloat16")
    torch.testing.assert_close(fast, reference, atol=3e-2, rtol=0)
    assert ((fast >= 0.5) == (reference >= 0.5)).float().mean() > 0.99
    expected = fast if resolve_precision("auto", "cpu") == "bfloat16" else reference
    torch.testing.assert_close(predict(net2d, image, roi_size=(32, 32)), expected, atol=0, rtol=0)


def test_standardize_uses_whole_image_statistics(net2d, image):
    as_float = torch.from_numpy(image).float()
    standardized = ((as_float - as_float.mean()) / as_float.std(unbiased=False)).numpy()
    torch.testing.assert_close(
        predict(net2d, image, roi_size=(32, 32), normalization="standardize"),
        predict(net2d, standardized, roi_size=(32, 32), normalization="none"),
        atol=1e-5,
        rtol=0,
    )


def test_tta_equals_mean_of_flipped_predictions(net2d, image):
    # one window covering the image, so flipping the image flips the window grid exactly
    window = image[:, :32, :48]
    roi = (32, 48)
    predictions = [predict(net2d, window, roi_size=roi)]
    for axis in (1, 2):  # height, width
        flipped = np.flip(window, axis).copy()
        predictions.append(predict(net2d, flipped, roi_size=roi).flip(axis))
    torch.testing.assert_close(
        predict(net2d, window, roi_size=roi, tta=True), torch.stack(predictions).mean(0), atol=1e-5, rtol=0
    )


def test_dihedral_tta_equals_mean_over_the_8_rotations_and_reflections(net2d, image):
    window = image[:, :32, :48]  # not square: transposed views are windows of 48x32
    predictions = []
    for k in range(4):
        for mirrored in (False, True):
            view = np.rot90(window[:, :, ::-1] if mirrored else window, k, axes=(1, 2)).copy()
            prob = predict(net2d, view, roi_size=view.shape[1:])
            prob = torch.rot90(prob, -k, dims=(1, 2))
            predictions.append(prob.flip(2) if mirrored else prob)
    torch.testing.assert_close(
        predict(net2d, window, roi_size=(32, 48), tta="dihedral"), torch.stack(predictions).mean(0), atol=1e-5, rtol=0
    )


def test_flips_is_the_named_form_of_tta_true_and_unknown_modes_are_refused(net2d, image):
    torch.testing.assert_close(predict(net2d, image, roi_size=(32, 32), tta="flips"),
                               predict(net2d, image, roi_size=(32, 32), tta=True))
    torch.testing.assert_close(predict(net2d, image, roi_size=(32, 32), tta="none"), predict(net2d, image, roi_size=(32, 32)))
    with pytest.raises(ValueError, match="tta must be"):
        predict(net2d, image, roi_size=(32, 32), tta="rotations")
    net3d = UNet(spatial_dims=3, in_channels=1, out_channels=1, features=(2, 4)).eval()
    with pytest.raises(ValueError, match="2D network"):
        predict(net3d, np.zeros((1, 8, 8, 8), np.float32), roi_size=(8, 8, 8), tta="dihedral")


@pytest.mark.parametrize("slice_axis", [0, 2])
def test_2d_network_over_a_volume_slice_by_slice(slice_axis):
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 8)).eval()
    volume = np.random.default_rng(2).integers(0, 256, (1, 24, 20, 6), dtype=np.uint8)
    probs = predict(net, volume, roi_size=(16, 16), sw_batch_size=5, slice_axis=slice_axis, normalization="scale255")
    per_slice = [
        predict(net, np.take(volume, i, axis=1 + slice_axis), roi_size=(16, 16), normalization="scale255")
        for i in range(volume.shape[1 + slice_axis])
    ]
    assert probs.shape == (1, 24, 20, 6)
    torch.testing.assert_close(probs, torch.stack(per_slice, dim=1 + slice_axis), atol=1e-5, rtol=0)


def test_3d_network_runs_natively_and_softmax_sums_to_one():
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, features=(4, 8)).eval()
    volume = np.random.default_rng(3).normal(size=(1, 20, 18, 14)).astype(np.float32)
    probs = predict(net, volume, roi_size=(16, 16, 16), activation="softmax", mode="constant")
    assert probs.shape == (3, 20, 18, 14)
    torch.testing.assert_close(probs.sum(0), torch.ones(20, 18, 14), atol=1e-5, rtol=0)


def test_float16_accumulation_stays_close_to_float32(net2d, image):
    reference = predict(net2d, image, roi_size=(32, 32), precision="float32")
    half = predict(net2d, image, roi_size=(32, 32), accumulate_dtype=torch.float16, precision="float32")
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), reference, atol=2e-3, rtol=0)


def test_rescaled_prediction_comes_back_at_the_input_size_and_fov_zeroes_outside(net2d, image):
    fov = np.zeros(image.shape[1:], dtype=bool)
    fov[10:60, 20:70] = True
    probs = predict(net2d, image, roi_size=(32, 32), scale=0.6, fov_mask=fov)
    assert probs.shape == (1, 70, 90)
    assert probs[0][~fov].abs().max() == 0
    assert probs[0][fov].min() > 0


def test_fundus_scale_is_one_near_the_training_width_and_the_ratio_otherwise():
    fov = np.zeros((100, 700), dtype=bool)
    fov[:, 50:570] = True  # 520 pixels wide
    assert fundus_scale(fov, training_fov_width=540) == 1.0
    assert fundus_scale(fov, training_fov_width=1040) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="empty"):
        fundus_scale(np.zeros((4, 4), dtype=bool), training_fov_width=540)


def test_auto_scale_resamples_to_the_training_width(image):
    seen_sizes = []

    class RecordingNet(torch.nn.Module):
        def forward(self, windows: torch.Tensor) -> torch.Tensor:
            seen_sizes.append(tuple(windows.shape[2:]))
            return windows[:, :1]

    fov = np.ones(image.shape[1:], dtype=bool)  # 90 pixels wide: twice the "training" width of 45
    probs = predict(RecordingNet(), image, roi_size=(-1, -1), scale="auto", training_fov_width=45, fov_mask=fov)
    assert probs.shape == (1, 70, 90)
    assert seen_sizes == [(35, 45)]  # roi -1 means the whole (resampled) image in one window


def test_erosion_moves_a_smooth_edge_inward_by_its_radius_and_raises_nothing():
    columns = torch.arange(60, dtype=torch.float32)
    ramp = ((columns - 30) / 8 + 0.5).clamp(0, 1).expand(2, 40, 60)  # rises along x, 0.5 at x = 30
    for radius in (0.4, 1.5, 2.7):
        eroded = erode(ramp, radius)
        assert (eroded <= ramp).all()
        torch.testing.assert_close(eroded[:, :, 10:50], ((columns[10:50] - radius - 30) / 8 + 0.5).clamp(0, 1)
                                   .expand(2, 40, 40), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="positive"):
        erode(ramp, 0.0)


class _MarksTouchedPixels(torch.nn.Module):
    """A "network" labelling as DRIVE's annotators do: vessel wherever a vessel covers any of its pixel."""

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return 1000 * (windows[:, :1] - 0.02)


@pytest.mark.parametrize("left, width", [(30, 8), (31, 8), (29, 9), (30, 5)])
def test_upsampled_edge_erosion_narrows_a_vessel_predicted_on_a_4x_coarser_grid(left, width):
    image = np.zeros((1, 64, 96), np.float32)
    image[:, :, left : left + width] = 1  # a vertical vessel
    run = lambda **kwargs: predict(_MarksTouchedPixels(), image, roi_size=(-1, -1), normalization="none",  # noqa: E731
                                   precision="float32", **kwargs)
    coarse, eroded = run(scale=0.25), run(scale=0.25, upsampled_edge_erosion=True)
    widths = [int((probs[0, 32] >= 0.5).sum()) for probs in (coarse, eroded)]
    # a pixel of the 4x coarser grid puts each edge up to 4 pixels out, 2 on average; the erosion takes back
    # (4 - 1) / 2 = 1.5 on each side
    assert 2 <= widths[0] - widths[1] <= 4
    assert widths[1] >= width
    assert (eroded <= coarse).all()


@pytest.mark.parametrize("scale", [None, 1.0, 2.0])
def test_upsampled_edge_erosion_leaves_an_image_not_shrunk_as_it_is(net2d, image, scale):
    torch.testing.assert_close(predict(net2d, image, roi_size=(32, 32), scale=scale, upsampled_edge_erosion=True),
                               predict(net2d, image, roi_size=(32, 32), scale=scale), atol=0, rtol=0)


def test_upsampled_edge_erosion_refuses_what_it_cannot_erode_before_any_window_runs(net2d, image):
    class MustNotRun(torch.nn.Module):
        def forward(self, windows: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the network ran")

    with pytest.raises(ValueError, match="sigmoid"):
        predict(MustNotRun(), image, roi_size=(32, 32), scale=0.5, activation="softmax", upsampled_edge_erosion=True)
    volume = np.zeros((3, 40, 40, 6), dtype=np.uint8)  # a 2D network slice by slice
    with pytest.raises(ValueError, match="2D images"):
        predict(MustNotRun(), volume, roi_size=(32, 32), scale=0.5, upsampled_edge_erosion=True)
    # no shrinking, nothing to erode: a softmax network runs as usual
    assert predict(net2d, image, roi_size=(32, 32), activation="softmax", upsampled_edge_erosion=True).shape[0] == 1


def test_wrong_dimensions_are_reported(net2d):
    with pytest.raises(ValueError, match="spatial"):
        predict(net2d, np.zeros((3, 8), dtype=np.uint8), roi_size=(16, 16))


def _fundus(height: int = 80, width: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """A bright noisy disc on a black surround, (3, H, W) uint8, and its (H, W) FOV."""
    yy, xx = np.mgrid[:height, :width]
    fov = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (0.45 * height) ** 2
    pixels = np.random.default_rng(3).integers(60, 220, (3, height, width))
    return np.where(fov, pixels, 0).astype(np.uint8), fov


def test_standardize_fov_sees_what_the_training_transform_gives(net2d):
    from medseg.data.transforms import standardize_inside_fov

    image, fov = _fundus()
    as_float = torch.from_numpy(image).float() / 255
    trained_on = standardize_inside_fov({"image": as_float.clone(), "mask": torch.from_numpy(fov)[None].float()})
    expected = predict(net2d, trained_on["image"], roi_size=(32, 32), normalization="none")
    expected[:, ~torch.from_numpy(fov)] = 0
    torch.testing.assert_close(
        predict(net2d, as_float, roi_size=(32, 32), normalization="standardize_fov", fov_mask=fov), expected,
        atol=1e-5, rtol=0,
    )


def test_standardize_fov_ignores_the_surround_and_estimates_the_fov_when_none_is_given(net2d):
    image, fov = _fundus()
    wider = np.zeros((3, 120, 140), dtype=np.uint8)  # the same retina with more black surround
    wider[:, 20:100, 25:115] = image
    inside = predict(net2d, image, roi_size=(32, 32), normalization="standardize_fov")[:, fov]
    wider_inside = predict(net2d, wider, roi_size=(32, 32), normalization="standardize_fov")[:, 20:100, 25:115][:, fov]
    # windows see other neighbours near the border of a smaller frame; the statistics are the same
    assert (inside - wider_inside).abs().median() < 1e-3
