"""Training a bundle's recipe on a labelled folder, from trained weights (``medseg.engines.finetune``)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from ignite.engine import Engine

from medseg.data import LabelledFolder, write_synthetic_folder
from medseg.engines import TimeBudget
from medseg.engines.ensemble import EnsemblePlan, join_checkpoints
from medseg.engines.finetune import (
    FolderTraining,
    LinearWarmUp,
    fine_tuned_metadata,
    folder_training_overrides,
    initial_weights,
    initial_weights_overrides,
    member_initial_weights,
    trained_fov_width,
)
from medseg.networks import UNet, ensemble_state_dict
from medseg.resources import bundle_folder, overlay_file, read_bundle_config

SMALL = {"network_features": [4, 8], "ensemble_members": 1}


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> FolderTraining:
    root = write_synthetic_folder(tmp_path_factory.mktemp("own") / "mine", 3, height=64, width=64)
    return FolderTraining(LabelledFolder.of(root / "images", root / "labels", root / "masks"), n_val=1)


def _net(seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8))


def test_each_member_of_an_ensemble_starts_from_its_own_member(tmp_path):
    members = [_net(0).state_dict(), _net(1).state_dict()]
    paths = member_initial_weights(ensemble_state_dict(members), 2, tmp_path)
    for k, path in enumerate(paths):
        assert all(torch.equal(torch.load(path)[name], members[k][name]) for name in members[k])
    plan = EnsemblePlan(2, 0, 0, member_init=tuple(map(str, paths)))
    assert [plan.member_overrides(k)["init_weights"] for k in range(2)] == [str(path) for path in paths]


def test_weights_of_another_number_of_networks_are_refused(tmp_path):
    with pytest.raises(ValueError, match="hold 1 network"):
        member_initial_weights(_net(0).state_dict(), 2, tmp_path)


def test_a_bundle_starts_from_its_shipped_weights():
    bundle = bundle_folder("drive_vessel_unet")
    shipped = join_checkpoints([bundle / "models" / "model.pt"])
    assert initial_weights([bundle]).keys() == shipped.keys()


def test_the_train_config_builds_its_network_with_the_initial_weights(tmp_path, training):
    bundle = bundle_folder("drive_vessel_unet")
    torch.save(_net(5).state_dict(), tmp_path / "start.pt")
    overrides = {**SMALL, **initial_weights_overrides(bundle, tmp_path / "start.pt", [overlay_file("finetune")])}
    overrides.update(folder_training_overrides(bundle, training, "train", overrides))
    parser = read_bundle_config(bundle, "train", [overlay_file("finetune")], {**overrides, "output_dir": str(tmp_path)})
    with contextlib.chdir(bundle):
        network = parser.get_parsed_content("network")
        train, val = parser.get_parsed_content("records")
        fov_width = parser.get_parsed_content("train#transforms#fov_width")
        warm_up = parser.get_parsed_content("train#state_handlers")[-1]
    assert all(torch.equal(value, _net(5).state_dict()[name]) for name, value in network.state_dict().items())
    assert (len(train), len(val)) == (2, 1)
    assert fov_width == 540  # the bundle's training FOV width, as at inference
    assert isinstance(warm_up, LinearWarmUp) and warm_up.iterations == 50


def test_keep_bundle_data_mixes_the_bundles_training_photographs_into_training_only(tmp_path, training, drive_root):
    bundle = bundle_folder("drive_vessel_unet")
    mixed = FolderTraining(training.folder, n_val=1, keep_bundle_data=True)
    overrides = {"dataset_dir": str(drive_root), "keep_bundle_data_ratio": 2.0, "output_dir": str(tmp_path)}
    overrides.update(folder_training_overrides(bundle, mixed, "train", overrides))
    parser = read_bundle_config(bundle, "train", (), overrides)
    with contextlib.chdir(bundle):
        train, val = parser.get_parsed_content("records")
    assert len(train) == 2 + 4 and sum(str(drive_root) in record["image"] for record in train) == 4
    assert len(val) == 1 and str(training.folder.images) in val[0]["image"]  # validation on the user's photographs


def test_the_learning_rate_warms_up_linearly_under_a_time_budget():
    network = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    rates = []
    engine = Engine(lambda engine, batch: rates.append(optimizer.param_groups[0]["lr"]))
    TimeBudget(minutes=60, optimizer=optimizer).attach(engine)
    LinearWarmUp(optimizer, iterations=4).attach(engine)
    engine.run([0] * 6, max_epochs=1)
    assert rates[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1], rel=1e-3)
    assert rates[5] == pytest.approx(0.1, rel=1e-3)


def test_a_new_bundles_metadata_keeps_the_widening_of_its_own_weights_and_none_of_its_parents_facts():
    parent = {"version": "0.3.2", "medseg": {"fundus": True, "training_fov_width": 540, "validation_threshold": 0.48,
                                             "resampled_vessel_widening": 0.45, "training": {"date": "2026-11-30"}}}
    summary = {"digest": "d9a946c8b49974c5", "pairs": 11, "source": "/photos", "validation": 3,
               "validation_ids": "3 5 6"}
    measured = fine_tuned_metadata(parent, "drive_vessel_unet", summary, {"heldout_f1": 0.84}, widening=0.28)
    assert measured["medseg"]["resampled_vessel_widening"] == 0.28
    assert {"validation_threshold", "training"}.isdisjoint(measured["medseg"])
    assert measured["medseg"]["training_fov_width"] == 540  # the parent's recipe, unless the training set another
    assert fine_tuned_metadata(parent, "drive_vessel_unet", summary, {}, fov_width=810)["medseg"]["training_fov_width"] == 810
    unmeasured = fine_tuned_metadata(parent, "drive_vessel_unet", summary, {"heldout_f1": 0.84})
    assert "resampled_vessel_widening" not in unmeasured["medseg"]  # the library's applies


def _trained_at(folder, width) -> str:
    """A checkpoint in ``folder/checkpoints`` beside the executed config its training wrote (MONAI's
    ``save_execute_config``), whose ``training_fov_width`` is ``width``."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config_20261207_120000.json").write_text(json.dumps({"training_fov_width": width}))
    return str(folder / "checkpoints" / "model.pt")


def test_the_fov_width_a_training_set_is_read_from_its_executed_config(tmp_path):
    assert trained_fov_width([_trained_at(tmp_path / "own", "@_meta_::medseg::training_fov_width")]) is None
    members = [_trained_at(tmp_path / "wide" / f"member{k}", 810) for k in range(2)]
    assert trained_fov_width(members) == 810.0
    with pytest.raises(ValueError, match="different FOV widths"):
        trained_fov_width([members[0], _trained_at(tmp_path / "narrow", 540)])
