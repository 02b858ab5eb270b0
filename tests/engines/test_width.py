"""The widening of trained weights (how much wider than the label convention they mark vessels on a shrunk
photograph), measured on labelled photographs as `medseg bundle ship --new-bundle` measures it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.data import drive_records, split_validation
from medseg.data.files import read_pixels
from medseg.engines.evaluation import evaluate_vessel_folder
from medseg.engines.width import measure_widening, measure_widening_and_score, zero_crossing
from medseg.fundus import RESAMPLED_VESSEL_WIDENING, resample, resample_vessel_label
from medseg.inference import InferenceSettings, LoadedModel, load_model
from medseg.networks import UNet

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "drive_vessel_unet"


def test_the_widening_is_where_the_width_error_crosses_zero_interpolated():
    assert zero_crossing([0.0, 0.1, 0.2], np.array([0.3, 0.1, -0.1])) == pytest.approx(0.15)
    assert zero_crossing([0.0, 0.1, 0.2], np.array([0.3, 0.0, -0.1])) == pytest.approx(0.1)


def test_a_widening_outside_the_grid_is_the_grids_end():
    assert zero_crossing([0.0, 0.1, 0.2], np.array([-0.1, -0.2, -0.3])) == 0.0  # narrower at every widening
    assert zero_crossing([0.0, 0.1, 0.2], np.array([0.5, 0.4, 0.3])) == 0.2  # wider at every widening


@pytest.fixture(scope="module")
def shipped_model():
    return load_model(BUNDLE)


def test_photographs_that_are_not_shrunk_measure_no_widening(shipped_model, synthetic_drive):
    records = drive_records(synthetic_drive, "training")  # as wide as DRIVE's FOV: left at their scale
    assert measure_widening(shipped_model, records) is None


def _enlarged_twofold(record: dict, folder: Path) -> dict[str, str]:
    """A DRIVE record enlarged as bench/vessel_width.py enlarges it: the photograph and its FOV mask resampled, its
    label drawn at the enlarged size by the convention; --scale auto shrinks it back by about 0.5."""
    photo = torch.as_tensor(read_pixels(Path(record["image"]), mode="RGB")).permute(2, 0, 1).float()
    size = [2 * side for side in photo.shape[1:]]
    label = torch.as_tensor(read_pixels(Path(record["label"]), mode="L") > 127)[None].float()
    mask = torch.as_tensor(read_pixels(Path(record["mask"]), mode="L") > 127)[None].float()
    enlarged = {key: folder / f"{record['id']}_{key}.png" for key in ("image", "label", "mask")}
    Image.fromarray(resample(photo, size).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()).save(enlarged["image"])
    Image.fromarray((resample_vessel_label(label, size)[0].numpy() > 0).astype(np.uint8) * 255).save(enlarged["label"])
    Image.fromarray((resample(mask, size)[0].numpy() >= 0.5).astype(np.uint8) * 255).save(enlarged["mask"])
    return {"id": record["id"], **{key: str(path) for key, path in enlarged.items()}}


def test_the_shipped_drive_networks_own_widening_on_its_validation_photographs_enlarged_is_the_librarys(
        shipped_model, drive_root, tmp_path):
    # the 4 photographs the bundle held out for validation: one photograph's widening alone ranges from 0 to 0.8
    held_out = split_validation(drive_records(drive_root, "training"), n_val=4, seed=0)[1]
    measured = measure_widening(shipped_model, [_enlarged_twofold(record, tmp_path) for record in held_out])
    assert measured is not None and measured.photographs == 4 and not measured.clamped
    # each photograph's own widening too, which ship prints: the pooled one lies among them
    assert len(measured.per_photograph) == 4
    assert min(measured.per_photograph) <= measured.widening <= max(measured.per_photograph)
    assert measured.errors[0] > 0 > measured.errors[-1]  # too wide without the widening, too thin at 0.8
    assert (np.diff(measured.errors) < 0).all()  # more erosion, narrower vessels
    # the same photographs, another estimate than the constant's, chosen over several factors (bench/vessel_width.py)
    assert measured.widening == pytest.approx(RESAMPLED_VESSEL_WIDENING, abs=0.1)


def test_one_pass_measures_the_widening_and_scores_with_it_as_measuring_then_evaluating_does(
        shipped_model, drive_root, tmp_path):
    # what bundle ship --new-bundle does: each held-out photograph predicted once, for the widening and the scores
    held_out = split_validation(drive_records(drive_root, "training"), n_val=4, seed=0)[1][:1]
    records = [_enlarged_twofold(record, tmp_path) for record in held_out]
    widening, report = measure_widening_and_score(shipped_model, records, tmp_path / "one_pass.json")
    assert widening == measure_widening(shipped_model, records)
    eroding = shipped_model.with_settings(resampled_vessel_widening=widening.widening)
    assert report == evaluate_vessel_folder(eroding, records, tmp_path / "two_passes.json")
    assert report["per_image"].keys() == {record["id"] for record in records}


def test_shrunk_photographs_on_which_the_network_finds_no_vessel_measure_nothing_and_say_so(synthetic_drive):
    network = UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8, 16)).eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.Conv2d) and module.out_channels == 1:
                module.bias.fill_(-100.0)  # background everywhere
    model = LoadedModel(network, InferenceSettings(roi_size=(64, 64), fundus=True, training_fov_width=270,
                                                   upsampled_edge_erosion=True))
    with pytest.raises(ValueError, match="no vessel of the 2 shrunk photographs"):
        measure_widening(model, drive_records(synthetic_drive, "training"))
