"""The whole path of a user's own labelled photographs, on a folder this test writes: check, train from scratch,
fine-tune from a checkpoint, ship into a new bundle, infer with it (issue #33).

The bundle is a small copy of ``drive_vessel_unet`` (exported, its network and patches shrunk, one network, a
training FOV width that fits 64-pixel photographs), so that the path runs in about a minute on one core; the
commands are those a user types with the shipped bundle.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import re
import shlex

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from monai.utils import path_to_sqlite_uri
from PIL import Image

from medseg.cli import main
from medseg.data import write_synthetic_folder
from medseg.inference.runtime import native_bfloat16
from medseg.tracking import recorded_run_id
from medseg.networks import UNet, ensemble_state_dict

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()

# the smallest recipe of drive_vessel_unet that still runs every part: a few epochs, one validation at the end
SMALL_RECIPE = {"network_features": [4, 8, 16], "patch_size": [32, 32], "roi_size": [64, 64], "sw_batch_size": 8,
                "patches_per_image": 2, "batch_images": 2, "ensemble_members": 1, "max_epochs": 2, "val_interval": 2}
SMALL_FOV_WIDTH = 60


def _small_copy(parent: str, bundle: Path, members: int) -> Path:
    """``parent`` exported to ``bundle`` with :data:`SMALL_RECIPE`, ``members`` networks and, for that network,
    freshly initialised weights in ``models/model.pt``."""
    assert main(["bundle", "export", parent, str(bundle)]) == 0
    train = bundle / "configs" / "train.yaml"
    recipe = {**yaml.safe_load(train.read_text()), **SMALL_RECIPE, "ensemble_members": members}
    train.write_text(yaml.safe_dump(recipe, sort_keys=False))
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["medseg"]["training_fov_width"] = SMALL_FOV_WIDTH
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    networks = [UNet(spatial_dims=2, in_channels=3, out_channels=1, features=SMALL_RECIPE["network_features"],
                     norm="batch", upsample="deconv").state_dict() for _ in range(members)]
    torch.save(ensemble_state_dict(networks), bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> Path:
    return _small_copy("drive_vessel_unet", tmp_path_factory.mktemp("bundles") / "small_vessel_unet", 1)


def _medseg(cwd: Path, *argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "medseg", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"medseg {' '.join(argv)}:\n{(done.stdout + done.stderr)[-3000:]}"
    return done.stdout


def _run(client: MlflowClient, output: Path):
    return client.get_run(recorded_run_id(output))


def test_own_photographs_are_checked_trained_fine_tuned_shipped_and_inferred(small_bundle, tmp_path,
                                                                             monai_meta_schema):
    mine = write_synthetic_folder(tmp_path / "mine", 4, height=64, width=64, seed=3, image_format="jpg")
    folder = ["--images", str(mine / "images"), "--labels", str(mine / "labels")]
    assert "4 labelled photographs, every file valid" in _medseg(tmp_path, "data", "check", *folder)

    # from scratch, the FOV estimated (no masks given), one photograph held out
    _medseg(tmp_path, "train", str(small_bundle), *folder, "--val", "1", "--quiet", "--output-dir", "scratch")
    client = MlflowClient(path_to_sqlite_uri(str(tmp_path / "mlflow.db")))
    run = _run(client, tmp_path / "scratch")
    [dataset] = [d for d in run.inputs.dataset_inputs if d.dataset.name == "mine"]
    assert dataset.dataset.source == json.dumps({"uri": str(mine)})
    assert run.data.params["training_folder.pairs"] == "4" and run.data.params["training_folder.validation"] == "1"
    held_out = run.data.params["training_folder.validation_ids"]
    assert sorted((tmp_path / "scratch" / "fov_estimates" / "val").iterdir())[0].stem == held_out

    # fine-tuned from that checkpoint with the masks, under the fine-tuning overlay and a few seconds of budget,
    # at a larger FOV width than the bundle's (photographs enlarged 1.5-fold)
    scratch = tmp_path / "scratch" / "checkpoints" / "model.pt"
    _medseg(tmp_path, "train", str(small_bundle), *folder, "--masks", str(mine / "masks"), "--val", "1",
            "--init-from", str(scratch), "--config", "finetune", "--set", "time_budget_minutes=0.05",
            "--set", "val_interval=1", "--set", f"training_fov_width={SMALL_FOV_WIDTH * 1.5:g}", "--quiet",
            "--output-dir", "tuned")
    tuned_run = _run(client, tmp_path / "tuned")
    assert tuned_run.data.params["init_weights"] == str(tmp_path / "tuned" / "init_weights" / "member0.pt")
    assert tuned_run.data.params["training_folder.validation_ids"] == held_out  # the same split
    # what autocast_dtype auto resolved to on this machine
    assert tuned_run.data.tags["medseg.autocast_dtype"] == ("bfloat16" if native_bfloat16("cpu") else "float32")

    # a new bundle of the fine-tuned weights, scored on the held-out photograph
    tuned = tmp_path / "tuned" / "checkpoints" / "model.pt"
    shipped = _medseg(tmp_path, "bundle", "ship", str(small_bundle), str(tuned), "--new-bundle", "mine_bundle",
                      *folder, "--masks", str(mine / "masks"), "--val", "1")
    new_bundle = tmp_path / "mine_bundle"
    meta = json.loads((new_bundle / "configs" / "metadata.json").read_text())
    assert meta["medseg"]["parent_bundle"]["name"] == "small_vessel_unet"
    # it infers at the FOV width its weights were fine-tuned at
    assert meta["medseg"]["training_fov_width"] == SMALL_FOV_WIDTH * 1.5
    # the parent's threshold and widening describe other weights; photographs enlarged to the training FOV width
    # are not shrunk, so no widening of these weights is measured and the library's applies
    assert not {"validation_threshold", "resampled_vessel_widening"} & meta["medseg"].keys()
    assert "none of the held-out photographs is shrunk" in shipped
    assert meta["medseg"]["training_data"]["count"] == 4 and meta["medseg"]["training_data"]["held_out"] == held_out
    assert 0.0 <= meta["eval_metrics"]["heldout_f1"] <= 1.0
    # its training record comes from the fine-tuning's MLflow run, and it is registered under its own name
    assert meta["medseg"]["training"]["command"] == tuned_run.data.tags["medseg.command"]
    version = client.get_model_version("mine_bundle", "1")
    assert float(version.tags["heldout_f1"]) == meta["eval_metrics"]["heldout_f1"]
    assert version.tags["bundle_version"] == meta["version"]
    assert client.get_run(version.run_id).data.tags["mlflow.parentRunId"] == tuned_run.info.run_id
    verified = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
                               "configs/metadata.json", "--filepath", str(monai_meta_schema)],
                              cwd=new_bundle, capture_output=True, text=True)
    assert "metadata is verified with no error" in verified.stdout + verified.stderr

    # the new bundle infers with medseg and with MONAI's runner
    _medseg(tmp_path, "infer", str(new_bundle), str(mine / "images" / "retina0.jpg"), "-o", "predicted")
    assert np.asarray(Image.open(next((tmp_path / "predicted").glob("retina0*")))).shape == (64, 64)
    monai_run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
                                "--input_files", f"['{mine / 'images' / 'retina1.jpg'}']", "--output_dir",
                                str(tmp_path / "monai_predicted")], cwd=new_bundle, capture_output=True, text=True)
    assert monai_run.returncode == 0, (monai_run.stdout + monai_run.stderr)[-3000:]
    assert any((tmp_path / "monai_predicted").rglob("*retina1*"))


def test_every_command_of_the_readme_section_runs_on_a_folder_of_synthetic_retinas(tmp_path):
    # fundus_vessel_unet as a small copy (its recipe shrunk, its two members freshly initialised), so that the
    # commands run in a minute; the training's budget a few seconds
    small = _small_copy("fundus_vessel_unet", tmp_path / "bundles" / "fundus_vessel_unet", 2)
    write_synthetic_folder(tmp_path / "my_photos", 3, height=64, width=64, seed=5, image_format="jpg")
    write_synthetic_folder(tmp_path / "new_photos", 2, height=64, width=64, seed=6)
    block = re.search(r"<!-- own-photographs -->\s*```sh\n(.*?)\n```", README, re.S).group(1)
    commands = [shlex.split(line) for line in block.splitlines()]
    assert [argv[1] for argv in commands] == ["data", "train", "evaluate", "bundle", "infer"]
    for argv in commands:
        argv = [str(small) if arg == "fundus_vessel_unet" else arg for arg in argv[1:]]
        if argv[0] == "train":
            argv += ["--set", "time_budget_minutes=0.05", "--set", "val_interval=1", "--quiet"]
        _medseg(tmp_path, *argv)
    assert json.loads((tmp_path / "my_bundle" / "configs" / "metadata.json").read_text())["eval_metrics"]
    masks = (tmp_path / "predictions").glob("*_mask.png")
    assert {path.stem.removesuffix("_mask") for path in masks} == {"retina0", "retina1"}


def test_a_bundle_of_classes_trains_on_a_folder_of_index_maps_with_their_void_value(tmp_path):
    from tests.data.test_labelled_folder import write_road_scenes

    scenes = write_road_scenes(tmp_path / "scenes", 4)
    folder = ["--images", str(scenes / "images"), "--labels", str(scenes / "labels"), "--void-value", "255"]
    small = ["--set", "network_features=[4,8]", "--set", "crop_size=[32,32]", "--set", "batch_images=2", "--set",
             "max_epochs=2", "--set", "val_interval=1", "--set", "roi_size=[48,64]"]
    _medseg(tmp_path, "train", "camvid_unet", *folder, "--val", "1", *small, "--quiet", "--output-dir", "roads")
    assert (tmp_path / "roads" / "checkpoints" / "model.pt").is_file()
    run = _run(MlflowClient(path_to_sqlite_uri(str(tmp_path / "mlflow.db"))), tmp_path / "roads")
    assert [d.dataset.name for d in run.inputs.dataset_inputs if d.dataset.name == "scenes"] == ["scenes"]
    assert run.data.params["training_folder.train"] == "3" and run.data.params["void_value"] == "255"
    # validated on the held-out frame, void ignored: the classes it holds (sky, building, road) are scored
    assert 0.0 <= run.data.metrics["val_miou"] <= 1.0
