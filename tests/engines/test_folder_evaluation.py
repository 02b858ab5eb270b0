"""``medseg evaluate BUNDLE --images DIR --labels DIR [--masks DIR]``: any labelled vessel dataset scored through
the inference path of ``medseg infer``, files paired by stem, bad pairs named before anything is scored."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.cli import main
from medseg.data import DatasetError, vessel_folder_records
from medseg.engines.evaluation import evaluate_vessel_folder
from medseg.inference import InferenceSettings, LoadedModel, predict_image, read_image
from medseg.metrics import FOVVesselMetrics
from medseg.networks import UNet

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "bundles" / "drive_vessel_unet"


@pytest.fixture
def vessel_folders(synthetic_drive, tmp_path) -> Path:
    """The synthetic DRIVE training retinas as a user's folders: images/, labels/ (index maps 0, 2, 3), masks/."""
    root = tmp_path / "photos"
    for folder in ("images", "labels", "masks"):
        (root / folder).mkdir(parents=True)
    for image in sorted((synthetic_drive / "training" / "images").glob("*.tif")):
        stem = image.name.split("_")[0]
        shutil.copy(image, root / "images" / f"eye{stem}.tif")
        label = np.asarray(Image.open(synthetic_drive / "training" / "1st_manual" / f"{stem}_manual1.gif").convert("L"))
        index_map = np.where(label > 127, 2 + (np.arange(label.shape[1]) % 2), 0).astype(np.uint8)
        Image.fromarray(index_map).save(root / "labels" / f"eye{stem}.png")
        mask = synthetic_drive / "training" / "mask" / f"{stem}_training_mask.gif"
        Image.open(mask).convert("L").save(root / "masks" / f"eye{stem}_mask.png")
    return root


@pytest.fixture
def tiny_model() -> LoadedModel:
    torch.manual_seed(0)
    network = UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8, 16)).eval()
    settings = InferenceSettings(roi_size=(64, 64), fundus=True, training_fov_width=540, validation_threshold=0.4)
    return LoadedModel(network, settings)


def test_files_pair_by_stem_and_masks_may_be_named_stem_mask(vessel_folders):
    records = vessel_folder_records(vessel_folders / "images", vessel_folders / "labels", vessel_folders / "masks")
    assert [record["id"] for record in records] == ["eye02", "eye03"]
    assert all(Path(record["mask"]).name == f"{record['id']}_mask.png" for record in records)


def test_every_unpaired_file_is_named(vessel_folders):
    (vessel_folders / "labels" / "eye02.png").unlink()
    (vessel_folders / "labels" / "stray.png").write_bytes((vessel_folders / "labels" / "eye03.png").read_bytes())
    with pytest.raises(DatasetError) as raised:
        vessel_folder_records(vessel_folders / "images", vessel_folders / "labels")
    assert f"{vessel_folders / 'images' / 'eye02.tif'}: image without label" in str(raised.value)
    assert f"{vessel_folders / 'labels' / 'stray.png'}: label without image" in str(raised.value)


def test_the_report_pools_the_fov_and_matches_what_infer_predicts(vessel_folders, tiny_model, tmp_path):
    records = vessel_folder_records(vessel_folders / "images", vessel_folders / "labels", vessel_folders / "masks")
    report = evaluate_vessel_folder(tiny_model, records, tmp_path / "report.json", label_positive=[2, 3])
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["images"] == 2 and report["fov"] == "given masks"
    assert report["threshold_0.5"]["threshold"] == 0.5
    assert report["threshold_val"]["threshold"] == pytest.approx(0.4, abs=1e-4)  # on the metric's 2**16 bins
    assert set(report["per_image"]) == {"eye02", "eye03"}
    # the same pixels scored by hand: infer's probabilities (at evaluation's float32), labels 2 and 3 as vessel,
    # inside the given mask
    expected = FOVVesselMetrics()
    settings = replace(tiny_model.settings, precision="float32")
    for record in records:
        image, meta = read_image(Path(record["image"]))
        fov = np.asarray(Image.open(record["mask"])) > 127
        probabilities = predict_image(tiny_model.network, image, meta, settings, fov).probabilities
        label = np.isin(np.asarray(Image.open(record["label"])), [2, 3])
        expected.update(probabilities[None], torch.as_tensor(label, dtype=torch.float32)[None, None],
                        torch.as_tensor(fov, dtype=torch.float32)[None, None])
    assert report["threshold_0.5"]["auc_roc"] == pytest.approx(expected.compute(0.5)["auc_roc"], abs=1e-9)


def test_without_masks_the_automatic_fov_is_where_pixels_are_scored(vessel_folders, tiny_model, tmp_path):
    records = vessel_folder_records(vessel_folders / "images", vessel_folders / "labels")
    report = evaluate_vessel_folder(tiny_model, records, tmp_path / "report.json", label_positive=[2, 3])
    assert report["fov"] == "estimated" and 0 <= report["threshold_0.5"]["f1"] <= 1


def test_a_size_mismatch_is_named_and_nothing_is_scored(vessel_folders, tiny_model, tmp_path):
    label = vessel_folders / "labels" / "eye03.png"
    Image.fromarray(np.asarray(Image.open(label))[:-4]).save(label)
    records = vessel_folder_records(vessel_folders / "images", vessel_folders / "labels", vessel_folders / "masks")
    with pytest.raises(DatasetError, match=f"{label}: size mismatch"):
        evaluate_vessel_folder(tiny_model, records, tmp_path / "report.json", label_positive=[2, 3])
    assert not (tmp_path / "report.json").exists()


def test_index_map_labels_need_their_vessel_values(vessel_folders, tiny_model, tmp_path):
    records = vessel_folder_records(vessel_folders / "images", vessel_folders / "labels")
    with pytest.raises(DatasetError, match="--label-positive"):
        evaluate_vessel_folder(tiny_model, records, tmp_path / "report.json")


def test_the_cli_scores_a_bundle_on_a_folder_and_prints_the_table(vessel_folders, tmp_path, capsys):
    code = main(["evaluate", str(BUNDLE), "--images", str(vessel_folders / "images"), "--labels",
                 str(vessel_folders / "labels"), "--label-positive", "2", "3", "--output-dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "threshold_0.5" in printed and "threshold_val" in printed and "per-image F1" in printed
    report = json.loads((tmp_path / "out" / "metrics_images.json").read_text())
    assert report["fov"] == "estimated"


def test_the_cli_names_a_missing_label_and_writes_nothing(vessel_folders, tmp_path, capsys):
    (vessel_folders / "labels" / "eye03.png").unlink()
    code = main(["evaluate", str(BUNDLE), "--images", str(vessel_folders / "images"), "--labels",
                 str(vessel_folders / "labels"), "--output-dir", str(tmp_path / "out")])
    assert code == 1
    assert f"{vessel_folders / 'images' / 'eye03.tif'}: image without label" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
