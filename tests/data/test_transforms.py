"""MONAI chains for vessel data: what they output, and that the cache holds exactly the deterministic part."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from monai.data import ThreadDataLoader
from monai.transforms import RandCropByPosNegLabeld
from monai.transforms.transform import RandomizableTrait

from medseg.data import (
    RandConvolutiond, cached_dataset, drive_records, read_binary, vessel_transforms, zoom_vessel_patch,
)


@pytest.fixture(scope="module")
def record(synthetic_drive_template):
    return drive_records(synthetic_drive_template, "test")[0]


def test_eval_keeps_whole_image_label_and_fov_mask(record):
    sample = vessel_transforms("eval")(record)
    assert sample["image"].shape == (3, 584, 565) and sample["image"].dtype == torch.float32
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    for key in ("label", "mask"):
        assert sample[key].shape == (1, 584, 565) and sample[key].dtype == torch.float32
        np.testing.assert_array_equal(sample[key][0].numpy(), read_binary(record[key]))


def test_second_observer_palette_labels_load_as_binary(record):
    sample = vessel_transforms("eval")({**record, "label": record["label2"]})
    np.testing.assert_array_equal(sample["label"][0].numpy(), read_binary(record["label2"]))
    assert set(sample["label"].unique().tolist()) == {0.0, 1.0}


def test_real_drive_loads_as_h_by_w(drive_root):
    sample = vessel_transforms("eval")(drive_records(drive_root, "training")[0])
    assert sample["image"].shape == (3, 584, 565) and sample["mask"].shape == (1, 584, 565)


@pytest.mark.parametrize("preprocessing", ["green", "clahe"])
def test_green_and_clahe_give_one_channel(record, preprocessing):
    rgb = vessel_transforms("eval")(record)["image"]
    image = vessel_transforms("eval", preprocessing=preprocessing)(record)["image"]
    assert image.shape == (1, 584, 565)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    if preprocessing == "green":
        torch.testing.assert_close(image[0], rgb[1])
    else:  # CLAHE spreads the green channel's narrow range of intensities
        assert float(image.std()) > float(rgb[1].std())


@pytest.mark.parametrize("pos_fraction, centre_is_vessel", [(1.0, True), (0.0, False)])
def test_patches_are_centred_on_vessel_or_fov_background(record, pos_fraction, centre_is_vessel):
    # An odd patch size keeps the sampled centre pixel in the centre through flips and 90-degree rotations.
    patches = vessel_transforms("train", patch_size=(33, 33), num_samples=6, pos_fraction=pos_fraction)(record)
    assert len(patches) == 6
    for patch in patches:
        assert patch["image"].shape == (3, 33, 33) and patch["label"].shape == patch["mask"].shape == (1, 33, 33)
        assert bool(patch["label"][0, 16, 16]) is centre_is_vessel
        assert bool(patch["mask"][0, 16, 16])  # background centres are inside the FOV
        assert "label_fg_indices" not in patch


@pytest.mark.parametrize("intensity_jitter", [False, True])
def test_intensity_jitter_is_the_only_change_of_pixel_values(record, intensity_jitter):
    image_values = set(vessel_transforms("eval")(record)["image"].flatten().tolist())
    chain = vessel_transforms("train", patch_size=(32, 32), num_samples=8, intensity_jitter=intensity_jitter)
    chain.set_random_state(seed=0)
    # crops, flips and 90-degree rotations move pixels; only the jitter gives them values the image lacks
    unchanged = [set(p["image"].flatten().tolist()) <= image_values for p in chain(record)]
    assert all(unchanged) if not intensity_jitter else not all(unchanged)


def test_scale_jitter_zooms_some_patches_and_keeps_labels_binary(record):
    image_values = set(vessel_transforms("eval")(record)["image"].flatten().tolist())
    chain = vessel_transforms("train", patch_size=(32, 32), num_samples=16, intensity_jitter=False, scale_jitter=0.5)
    chain.set_random_state(seed=0)
    patches = chain(record)
    # bilinear zooming gives pixels values between the image's own; the other half keep the image's values
    zoomed = [not set(p["image"].flatten().tolist()) <= image_values for p in patches]
    assert any(zoomed) and not all(zoomed)
    for patch in patches:
        assert patch["image"].shape == (3, 32, 32) and patch["label"].shape == patch["mask"].shape == (1, 32, 32)
        assert set(patch["label"].unique().tolist()) <= {0.0, 1.0}
        assert set(patch["mask"].unique().tolist()) <= {0.0, 1.0}


def _run_through(row: torch.Tensor, column: int) -> int:
    """Length of the run of label pixels of ``row`` that holds ``column`` (0 when it is background)."""
    inside = (row > 0).tolist()
    if not inside[column]:
        return 0
    left, right = column, column
    while left > 0 and inside[left - 1]:
        left -= 1
    while right < len(inside) - 1 and inside[right + 1]:
        right += 1
    return right - left + 1


@pytest.mark.parametrize("factor", [0.5, 1 / 1.5, 1.5, 2.0])
def test_scale_jitter_zooms_a_vessel_label_under_the_one_label_convention(factor):
    # a vertical vessel whose label is L columns wide ends at the centres of its edge columns: it is L - 1 wide;
    # zoomed by z, it is (L - 1) z wide and its label at the zoomed grid is the columns it touches, (L - 1) z + 1
    # on average: a line of slope z and intercept 1 over L - 1 (MONAI's nearest-neighbour zoom: L z, intercept z)
    lengths = np.arange(3, 16)
    drawn = []
    for columns in lengths:
        label = torch.zeros(1, 64, 64)
        label[..., 32 - columns // 2 : 32 - columns // 2 + columns] = 1
        record = {"image": label.repeat(3, 1, 1) * 2 - 1, "label": label, "mask": torch.ones(1, 64, 64)}
        zoomed = zoom_vessel_patch(record, factor)
        assert all(zoomed[key].shape == record[key].shape for key in record)
        assert set(zoomed["label"].unique().tolist()) <= {0.0, 1.0} and bool(zoomed["mask"].all())
        drawn.append(_run_through(zoomed["label"][0, 32], 32))
        # the image's vessel lies where its label is: their centres within a pixel (in the patch's middle half,
        # away from the reflections a zoom out pads with)
        label_row, image_row = zoomed["label"][0, 32, 16:48], zoomed["image"][1, 32, 16:48] + 1
        centre = float(torch.nonzero(label_row).float().mean())
        assert abs(float((torch.arange(32) * image_row).sum() / image_row.sum()) - centre) <= 1.0
    slope, intercept = np.polyfit(lengths - 1, drawn, 1)
    assert abs(slope - factor) <= 0.05 and abs(intercept - 1) <= 0.25, (slope, intercept)


def _patches_with_and_without(record: dict, jitter: str) -> tuple[list[dict], list[dict]]:
    """16 standardised training patches of ``record`` without and with one jitter (a ``vessel_transforms``
    flag), from the same random state: the same crops, flips and rotations either way."""

    def patches(on: bool) -> list[dict]:
        chain = vessel_transforms("train", patch_size=(32, 32), num_samples=16, normalization="standardize",
                                  intensity_jitter=False, **{jitter: on})
        chain.set_random_state(seed=0)
        return chain(record)

    plain, altered = patches(False), patches(True)
    changed = [not torch.equal(a["image"], p["image"]) for a, p in zip(altered, plain)]
    assert any(changed) and not all(changed), f"{jitter} should alter some patches, not all"
    for a, p in zip(altered, plain):
        assert torch.equal(a["label"], p["label"]) and torch.equal(a["mask"], p["mask"])
    return plain, altered


def test_acquisition_jitter_blurs_or_noises_some_image_patches_and_leaves_labels_as_drawn(record):
    plain, altered = _patches_with_and_without(record, "acquisition_jitter")
    for a, p in zip(altered, plain):
        # blur and zero-mean noise move intensities about, not the patch's brightness
        assert abs(float(a["image"].mean() - p["image"].mean())) < 0.05


def test_cache_ends_where_randomness_begins():
    chain = vessel_transforms("train")
    first_random = chain.get_index_of_first(lambda t: isinstance(t, RandomizableTrait))
    assert isinstance(chain.transforms[first_random], RandCropByPosNegLabeld)
    assert not any(isinstance(t, RandomizableTrait) for t in chain.transforms[:first_random])


def test_cached_dataset_serves_new_patches_without_rereading_files(synthetic_drive):
    records = drive_records(synthetic_drive, "training")
    dataset = cached_dataset(records, vessel_transforms("train", patch_size=(32, 32), num_samples=2))
    shutil.rmtree(synthetic_drive)  # everything the deterministic part needs is now in memory
    loader = ThreadDataLoader(dataset, batch_size=2, shuffle=False, num_workers=0)
    first, second = list(loader), list(loader)
    assert first[0]["image"].shape == (4, 3, 32, 32)  # 2 images x 2 patches each
    assert first[0]["id"] == ["02", "02", "03", "03"]
    assert not torch.equal(first[0]["image"], second[0]["image"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"phase": "test"}, "phase"),
        ({"preprocessing": "hsv"}, "preprocessing"),
        ({"pos_fraction": 1.5}, "pos_fraction"),
        ({"scale_jitter": -0.1}, "scale_jitter"),
    ],
)
def test_invalid_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vessel_transforms(**kwargs)


def test_fov_standardisation_takes_its_statistics_inside_the_mask_and_zeroes_the_outside(record):
    sample = vessel_transforms("eval", normalization="standardize_fov")(record)
    inside = sample["mask"][0] > 0.5
    pixels = sample["image"][:, inside]
    torch.testing.assert_close(pixels.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(pixels.std(1), torch.ones(3), atol=1e-4, rtol=0)
    assert float(sample["image"][:, ~inside].abs().max()) == 0.0


def test_index_map_labels_are_vessel_where_their_values_are_named(record, tmp_path):
    from PIL import Image

    binary = read_binary(record["label"])
    index_map = tmp_path / "index.png"
    Image.fromarray((binary * np.where(np.arange(binary.shape[1]) % 2, 3, 1)).astype(np.uint8)).save(index_map)
    sample = vessel_transforms("eval")({**record, "label": str(index_map), "label_positive": [1, 3]})
    np.testing.assert_array_equal(sample["label"][0].numpy(), binary)
    assert "label_positive" not in sample


def test_photographs_are_brought_to_the_training_fov_width(record):
    from medseg.fundus import fov_width

    native = vessel_transforms("eval")(record)
    width = fov_width(native["mask"][0].numpy() > 0.5)
    halved = vessel_transforms("eval", fov_width=width / 2)(record)
    assert fov_width(halved["mask"][0].numpy() > 0.5) == pytest.approx(width / 2, abs=2)
    assert halved["image"].shape[1:] == halved["label"].shape[1:] == halved["mask"].shape[1:]
    assert set(halved["label"].unique().tolist()) <= {0.0, 1.0}
    within_tolerance = vessel_transforms("eval", fov_width=width * 1.05)(record)
    assert within_tolerance["image"].shape == native["image"].shape


def test_labels_brought_to_the_training_width_keep_the_one_label_convention(record):
    from medseg.fundus import fov_width, resample_vessel_label

    native = vessel_transforms("eval")(record)
    width = fov_width(native["mask"][0].numpy() > 0.5)
    shrunk = vessel_transforms("eval", fov_width=width / 3)(record)
    # a shrunk pixel is vessel when a vessel touches it, whatever dataset the label came from
    torch.testing.assert_close(shrunk["label"], resample_vessel_label(native["label"], list(shrunk["label"].shape[1:])))
    assert shrunk["label"].sum() > native["label"].sum() / 9


def test_random_convolution_restyles_some_image_patches_and_leaves_labels_as_drawn(record):
    plain, restyled = _patches_with_and_without(record, "random_convolution")
    for r, p in zip(restyled, plain):
        assert r["image"].shape == p["image"].shape and r["image"].dtype == torch.float32


def test_random_convolution_keeps_each_channels_mean_and_spread_when_not_blended():
    image = torch.rand(3, 40, 40) * torch.tensor([1.0, 2.0, 0.5])[:, None, None]
    restyle = RandConvolutiond(keys="image", prob=1.0, kernel_sizes=(3,), image_weight=(0.0, 0.0))
    restyle.set_random_state(seed=1)
    out = restyle({"image": image})["image"]
    assert not torch.allclose(out, image)
    torch.testing.assert_close(out.mean(dim=(1, 2)), image.mean(dim=(1, 2)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 2)), image.std(dim=(1, 2)), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("kwargs, message", [({"kernel_sizes": (1, 2)}, "kernel_sizes"),
                                             ({"image_weight": (0.5, 1.5)}, "image_weight")])
def test_random_convolution_rejects_even_kernels_and_weights_outside_0_1(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandConvolutiond(keys="image", **kwargs)
