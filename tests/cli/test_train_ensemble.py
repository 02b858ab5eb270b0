"""How `medseg train` plans the members of an ensemble bundle: how many, on which cores, which to resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.cli import CLIError, build_parser, main
from medseg.cli import train as train_cli

REPO = Path(__file__).resolve().parents[2]
DRIVE_UNET, DRIVE_U2NET = REPO / "bundles" / "drive_vessel_unet", REPO / "bundles" / "drive_vessel_u2net"


def parsed(*argv: str):
    return build_parser().parse_args(["train", *argv])


def test_the_drive_unet_bundle_trains_two_members_and_a_set_makes_it_one():
    assert train_cli.ensemble_plan(parsed(str(DRIVE_UNET))).members == 2
    assert train_cli.ensemble_plan(parsed(str(DRIVE_UNET), "--set", "ensemble_members=1")).members == 1


def test_members_train_with_their_own_seeds_on_the_split_of_the_ensembles_seed():
    plan = train_cli.ensemble_plan(parsed(str(DRIVE_UNET), "--set", "seed=3"))
    assert (plan.seed, plan.split_seed, [plan.member_seed(k) for k in range(plan.members)]) == (3, 3, [3, 13])
    plan = train_cli.ensemble_plan(parsed(str(DRIVE_UNET), "--set", "seed=3", "--set", "split_seed=0"))
    assert (plan.split_seed, plan.member_seed(1)) == (0, 13)


def test_a_bundle_that_builds_one_network_refuses_an_ensemble(capsys):
    assert main(["train", str(DRIVE_U2NET), "--set", "ensemble_members=2"]) == 1
    err = capsys.readouterr().err
    assert f"{DRIVE_U2NET / 'configs' / 'train.yaml'}: no ensemble_members" in err


@pytest.mark.parametrize("value", ["0", "1.5", "two"])
def test_the_number_of_members_is_a_whole_number_of_at_least_one(value):
    with pytest.raises(CLIError, match="ensemble_members must be a whole number"):
        train_cli.ensemble_plan(parsed(str(DRIVE_UNET), "--set", f"ensemble_members={value}"))


def test_members_share_the_cores_or_train_in_turn(monkeypatch):
    monkeypatch.setattr(train_cli.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_cli.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4}, raising=False)
    assert train_cli.core_shares(2) == [{0, 2, 4}, {1, 3}]
    monkeypatch.setattr(train_cli.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert train_cli.core_shares(2) is None  # fewer cores than members
    monkeypatch.setattr(train_cli.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train_cli.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert train_cli.core_shares(2) is None  # one GPU: one member after the other


def test_resume_skips_finished_members_continues_the_others_and_names_a_folder_it_cannot_resume(tmp_path):
    finished, interrupted, empty = (tmp_path / name / "checkpoints" for name in ("member0", "member1", "member2"))
    for folder in (finished, interrupted, empty):
        folder.mkdir(parents=True)
    (finished / "latest_checkpoint_epoch=400.pt").touch()
    (finished / "model.pt").touch()
    (interrupted / "latest_checkpoint_epoch=400.pt").touch()
    assert train_cli.member_plan(finished.parent, resume=True) == "done"
    assert train_cli.member_plan(interrupted.parent, resume=True) == "resume"
    with pytest.raises(CLIError, match=f"{empty.parent}: no checkpoint of ensemble member member2"):
        train_cli.member_plan(empty.parent, resume=True)
    assert train_cli.member_plan(finished.parent, resume=False) == "train"
