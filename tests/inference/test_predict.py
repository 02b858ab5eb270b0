"""predict(): the generic window path, checked against MONAI's plain sliding window and against itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from medseg.inference import predict, resolve_precision
from medseg.networks import UNet


def test_uint8_windows_match_monai_on_the_float_image(net2d):
    image = np.random.default_rng(1).integers(0, 256, (3, 70, 90), dtype=np.uint8)
    probs = predict(net2d, image, roi_size=(32, 32), sw_batch_size=3, normalization="scale255", precision="float32")
    with torch.no_grad():
        expected = sliding_window_inference(
            torch.from_numpy(image)[None].float() / 255, (32, 32), 3, lambda w: torch.sigmoid(net2d(w)), mode="gaussian"
        )[0]
    assert probs.shape == (1, 70, 90)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


def test_an_image_smaller_than_the_window_runs_in_one_pass_padded_to_what_the_network_pools(net2d):
    image = np.random.default_rng(1).integers(0, 256, (3, 20, 50), dtype=np.uint8)
    probs = predict(net2d, image, roi_size=(32, 96), normalization="scale255", precision="float32")
    # 20 rows padded to 32 (the window's side), 50 columns to 64 (the next multiple of 32, which divides 96):
    # zeros split around the image, as MONAI pads, and cropped away afterwards
    padded = torch.nn.functional.pad(torch.from_numpy(image)[None].float() / 255, (7, 7, 6, 6))
    with torch.no_grad():
        expected = torch.sigmoid(net2d(padded))[0, :, 6:26, 7:57]
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(15, 15), (8, 200), (1, 1)])
def test_images_smaller_than_a_deep_networks_poolings_keep_their_size(shape):
    deep = UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8, 16, 32, 64)).eval()  # 4 poolings
    image = np.random.default_rng(2).integers(0, 256, (3, *shape), dtype=np.uint8)
    assert predict(deep, image, roi_size=(96, 96), normalization="scale255").shape == (1, *shape)


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


def test_wrong_dimensions_are_reported(net2d):
    with pytest.raises(ValueError, match="spatial"):
        predict(net2d, np.zeros((3, 8), dtype=np.uint8), roi_size=(16, 16))
