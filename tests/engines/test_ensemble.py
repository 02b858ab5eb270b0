"""medseg.engines.ensemble: how an ensemble bundle plans its members (how many, seeds, on which cores, which to
resume), joins their weights, and how MONAI's runner loads what it trains."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from monai.bundle import run as run_bundle

from medseg.cli import main
from medseg.engines import ensemble
from medseg.engines.ensemble import EnsembleError, join_checkpoints, member_plan, read_ensemble_plan
from medseg.networks import UNet, ensemble_size

REPO = Path(__file__).resolve().parents[2]
DRIVE_UNET, DRIVE_U2NET = REPO / "bundles" / "drive_vessel_unet", REPO / "bundles" / "drive_vessel_u2net"


def test_the_drive_unet_bundle_trains_two_members_and_a_set_makes_it_one():
    assert read_ensemble_plan(DRIVE_UNET).members == 2
    assert read_ensemble_plan(DRIVE_UNET, overrides={"ensemble_members": 1}).members == 1


def test_members_train_with_their_own_seeds_on_the_split_of_the_ensembles_seed():
    plan = read_ensemble_plan(DRIVE_UNET, overrides={"seed": 3})
    assert (plan.seed, plan.split_seed, [plan.member_seed(k) for k in range(plan.members)]) == (3, 3, [3, 13])
    plan = read_ensemble_plan(DRIVE_UNET, overrides={"seed": 3, "split_seed": 0})
    assert (plan.split_seed, plan.member_seed(1)) == (0, 13)


def test_a_bundle_that_builds_one_network_refuses_an_ensemble(capsys):
    assert main(["train", str(DRIVE_U2NET), "--set", "ensemble_members=2"]) == 1
    err = capsys.readouterr().err
    # one line, before anything runs: the bundle's configs have no ensemble_members to set
    assert err.count("\n") == 1 and "'ensemble_members' is not an id of drive_vessel_u2net's configs" in err


@pytest.mark.parametrize("value", ["0", "1.5", "two"])
def test_the_number_of_members_is_a_whole_number_of_at_least_one(value):
    with pytest.raises(EnsembleError, match="ensemble_members must be a whole number"):
        read_ensemble_plan(DRIVE_UNET, overrides={"ensemble_members": yaml.safe_load(value)})


def test_members_share_the_cores_or_train_in_turn(monkeypatch):
    monkeypatch.setattr(ensemble.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ensemble.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4}, raising=False)
    assert ensemble.core_shares(2) == [{0, 2, 4}, {1, 3}]
    monkeypatch.setattr(ensemble.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert ensemble.core_shares(2) is None  # fewer cores than members
    monkeypatch.setattr(ensemble.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ensemble.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert ensemble.core_shares(2) is None  # one GPU: one member after the other


def test_resume_skips_finished_members_continues_the_others_and_names_a_folder_it_cannot_resume(tmp_path):
    finished, interrupted, empty = (tmp_path / name / "checkpoints" for name in ("member0", "member1", "member2"))
    for folder in (finished, interrupted, empty):
        folder.mkdir(parents=True)
    (finished / "latest_checkpoint_epoch=400.pt").touch()
    (finished / "model.pt").touch()
    (interrupted / "latest_checkpoint_epoch=400.pt").touch()
    assert member_plan(finished.parent, resume=True) == "done"
    assert member_plan(interrupted.parent, resume=True) == "resume"
    with pytest.raises(EnsembleError, match=f"{empty.parent}: no checkpoint of ensemble member member2"):
        member_plan(empty.parent, resume=True)
    assert member_plan(finished.parent, resume=False) == "train"


def test_joined_checkpoints_are_the_ensemble_of_their_networks_and_a_bad_file_is_named(tmp_path):
    torch.manual_seed(0)
    first, second = (UNet(spatial_dims=2, in_channels=3, out_channels=1, features=[4, 8]) for _ in range(2))
    torch.save({"model": first.state_dict()}, tmp_path / "a.pt")  # as medseg train saves its checkpoints
    torch.save(second.state_dict(), tmp_path / "b.pt")  # as its final model.pt
    joined = join_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    assert ensemble_size(joined) == 2
    torch.testing.assert_close(joined["members.1.output_conv.weight"], second.state_dict()["output_conv.weight"])
    with pytest.raises(EnsembleError, match=f"{tmp_path / 'missing.pt'}: no such checkpoint"):
        join_checkpoints([tmp_path / "a.pt", tmp_path / "missing.pt"])
    torch.save(UNet(spatial_dims=2, in_channels=3, out_channels=1, features=[4, 16]).state_dict(), tmp_path / "c.pt")
    with pytest.raises(EnsembleError, match=f"{tmp_path / 'c.pt'}: not the same network"):
        join_checkpoints([tmp_path / "a.pt", tmp_path / "c.pt"])


def test_monais_runner_evaluates_the_one_network_it_trains_without_extra_flags(synthetic_drive, tmp_path):
    # `python -m monai.bundle run` trains one network (train.yaml's ensemble_members is medseg train's); the
    # bundle's evaluate.yaml builds as many networks as the weights at ckpt_path hold
    torch.manual_seed(0)
    single = UNet(spatial_dims=2, in_channels=3, out_channels=1, features=[4, 8, 16])
    weights = tmp_path / "model.pt"
    torch.save(single.state_dict(), weights)
    metrics = tmp_path / "metrics.json"
    with contextlib.chdir(DRIVE_UNET):
        run_bundle(config_file="configs/evaluate.yaml", logging_file=False, ckpt_path=str(weights),
                   dataset_dir=str(synthetic_drive), network_features=[4, 8, 16], roi_size=[64, 64], val_images=1,
                   tta=False, metrics_file=str(metrics))
        shipped = ConfigParser.load_config_file("configs/inference.yaml")
        parser = ConfigParser(shipped)
        assert parser.get_parsed_content("ensemble_members") == 2  # the shipped models/model.pt
    assert 0.0 <= json.loads(metrics.read_text())["threshold_0.5"]["f1"] <= 1.0
