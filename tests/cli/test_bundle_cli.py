"""``medseg bundle list`` and ``medseg bundle info``: the bundles described from their files, without running them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medseg.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES = REPO_ROOT / "bundles"
TRUST_NOTE = "bundle configs run Python expressions: load bundles only from trusted sources"


@pytest.fixture
def released_bundle(tmp_path) -> Path:
    """A copy of the DRIVE U-Net bundle as released: weights in models/ and test metrics in metadata.json."""
    bundle = tmp_path / "bundles" / "drive_vessel_unet"
    shutil.copytree(BUNDLES / "drive_vessel_unet", bundle, ignore=shutil.ignore_patterns("eval", "models"))
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"\0" * 3 * 1024 * 1024)
    # files outside the bundle layout (run outputs) are not part of it
    (bundle / "eval").mkdir()
    (bundle / "eval" / "metrics.json").write_text("{}")
    path = bundle / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["eval_metrics"] = {"test_f1": 0.81234, "test_auc_roc": 0.97}
    metadata["version"], metadata["changelog"] = "1.2.0", {"1.2.0": "Wider network.", "1.0.0": "First release."}
    path.write_text(json.dumps(metadata))
    return bundle


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_is_a_table_of_every_repository_bundle():
    done = subprocess.run([sys.executable, "-m", "medseg", "bundle", "list"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    header, _, *rows = done.stdout.splitlines()
    assert header.split() == ["bundle", "version", "task", "network", "eval", "metrics"]
    names = sorted(path.parents[1].name for path in BUNDLES.glob("*/configs/metadata.json"))
    assert [row.split()[0] for row in rows] == names
    network_column = slice(header.index("network"), header.index("eval metrics"))
    assert {row.split()[0]: row[network_column].strip() for row in rows}["drive_vessel_u2net"] == "U2NetLite"


def test_list_shows_recorded_eval_metrics(released_bundle, capsys):
    code, out, _ = run_cli(capsys, "bundle", "list", "--root", str(released_bundle.parent))
    assert code == 0
    (row,) = out.splitlines()[2:]
    assert row.split()[:2] == ["drive_vessel_unet", "1.2.0"]
    assert row.split()[-4:] == ["UNet", "x2", "test_f1=0.8123,", "test_auc_roc=0.9700"]  # an ensemble of two U-Nets


def test_info_summarises_metadata_files_and_commands(released_bundle, capsys):
    code, out, _ = run_cli(capsys, "bundle", "info", "drive_vessel_unet", "--root", str(released_bundle.parent))
    assert code == 0
    lines = out.splitlines()
    metadata = json.loads((released_bundle / "configs" / "metadata.json").read_text())
    assert lines[0].startswith("drive_vessel_unet 1.2.0")
    assert f"task: {metadata['task']}" in lines and "network: UNet x2" in lines
    assert lines.index("  1.2.0: Wider network.") + 1 == lines.index("  1.0.0: First release.")
    assert f"data: {metadata['data_source']}" in lines
    assert any(line.startswith("licence: ") and "Apache License" in line for line in lines)
    assert "  image: 3 channels (R, G, B), spatial shape 16*n x 16*n, float32 magnitude" in lines
    assert "  pred: 1 channels (vessel logit), spatial shape 16*n x 16*n, float32 segmentation" in lines
    assert ["  test_f1: 0.8123", "  test_auc_roc: 0.9700"] == lines[lines.index("eval metrics:") + 1:][:2]
    files = lines[lines.index("files:") + 1 : lines.index("commands:")]
    assert "  models/model.pt  3.0 MiB" in files and "  configs/metadata.json" in " ".join(files)
    assert not any("eval/" in line for line in files)
    assert f"  medseg evaluate {released_bundle}" in lines
    assert any("monai.bundle run --config_file configs/train.yaml" in line for line in lines)
    assert lines[-1] == f"trust: {TRUST_NOTE}"


def test_info_of_a_bundle_without_weights_or_metrics_says_so(tmp_path, capsys):
    bundle = tmp_path / "camvid_unet"
    shutil.copytree(BUNDLES / "camvid_unet", bundle, ignore=shutil.ignore_patterns("eval", "models"))
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    (bundle / "configs" / "metadata.json").write_text(json.dumps({**metadata, "eval_metrics": {}}))
    code, out, _ = run_cli(capsys, "bundle", "info", str(bundle))
    assert code == 0
    assert "eval metrics:\n  none recorded\n" in out
    assert "  (no weights in models/: train the bundle first)\ncommands:" in out
    assert "  pred: 11 channels (Sky, Building," in out


def test_info_of_an_unknown_bundle_names_it_and_the_known_ones(capsys):
    code, _, err = run_cli(capsys, "bundle", "info", "no_such_bundle")
    assert code == 1
    assert "no_such_bundle: not a bundle folder" in err and "drive_vessel_unet" in err


def test_info_of_a_bundle_with_broken_metadata_names_the_file(released_bundle, capsys):
    (released_bundle / "configs" / "metadata.json").write_text("{not json")
    code, _, err = run_cli(capsys, "bundle", "info", str(released_bundle))
    assert code == 1
    assert f"{released_bundle / 'configs' / 'metadata.json'}: not valid JSON" in err


TINY_UNET = {"network_features": [4, 8, 16], "roi_size": [64, 64], "val_images": 1, "tta": False, "ensemble_members": 1}


def tiny_unet_checkpoint(path: Path, seed: int) -> Path:
    """Weights of a tiny U-Net for the DRIVE bundle, as ``medseg train`` saves them (under ``model``)."""
    import torch

    from medseg.networks import UNet

    torch.manual_seed(seed)
    network = UNet(spatial_dims=2, in_channels=3, out_channels=1, features=TINY_UNET["network_features"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": network.state_dict()}, path)
    return path


@pytest.fixture
def shippable(tmp_path) -> tuple[Path, Path, list[str]]:
    """A copy of the DRIVE U-Net bundle set to one network, weights of a tiny U-Net for it, and the arguments that
    evaluate them on a synthetic DRIVE (3 training images, one of them for validation, and 2 test images)."""
    from medseg.data.synthetic import ensure_synthetic_drive

    bundle = tmp_path / "drive_vessel_unet"
    shutil.copytree(BUNDLES / "drive_vessel_unet", bundle, ignore=shutil.ignore_patterns("eval"))
    checkpoint = tiny_unet_checkpoint(tmp_path / "run" / "model.pt", seed=0)
    data = ensure_synthetic_drive(tmp_path / "drive", n_training=3, n_test=2)
    sets = [arg for key, value in TINY_UNET.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    return bundle, checkpoint, [*sets, "--data-root", str(data), "--output-dir", str(tmp_path / "out")]


def test_ship_writes_the_weights_and_the_metrics_of_exactly_those_weights(shippable, capsys):
    import torch

    bundle, checkpoint, args = shippable
    code, out, _ = run_cli(capsys, "bundle", "ship", str(bundle), str(checkpoint), "--dtype", "float16", *args)
    assert code == 0
    shipped = torch.load(bundle / "models" / "model.pt", weights_only=True)  # a plain state dict, as trainers save
    original = torch.load(checkpoint, weights_only=True)["model"]
    assert shipped.keys() == original.keys()
    for name, value in original.items():
        assert shipped[name].dtype == (torch.float16 if value.is_floating_point() else value.dtype), name
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    recorded = metadata["eval_metrics"]
    assert set(recorded) >= {"test_f1", "test_auc_roc", "test_f1_val_threshold"}
    kept_report = Path(args[args.index("--output-dir") + 1]) / "metrics_test.json"
    assert json.loads(kept_report.read_text())["threshold_0.5"]["f1"] == recorded["test_f1"]
    # the threshold chosen on the validation images travels with the weights, for medseg evaluate --images
    assert metadata["medseg"]["validation_threshold"] == json.loads(kept_report.read_text())["threshold_val"]["threshold"]
    # no MLflow run trained these weights: the record of the weights they replace is not kept for them
    assert "training" not in metadata["medseg"] and "the metadata keeps no training record" in out
    assert f"evaluation report: {kept_report}" in out
    # `medseg evaluate` of the shipped file prints the numbers that were recorded
    code, out, _ = run_cli(capsys, "evaluate", str(bundle), *args)
    assert code == 0
    report = json.loads(Path(out.strip().splitlines()[-1].removeprefix("metrics written to ")).read_text())
    assert report["threshold_0.5"]["f1"] == pytest.approx(recorded["test_f1"], abs=1e-6)
    assert report["threshold_0.5"]["auc_roc"] == pytest.approx(recorded["test_auc_roc"], abs=1e-6)
    assert not list((bundle / "models").glob(".ship-*"))


def test_ship_of_weights_that_do_not_fit_the_network_changes_nothing(shippable, capsys):
    bundle, checkpoint, args = shippable
    before = {path: path.read_bytes() for path in (bundle / "models" / "model.pt", bundle / "configs" / "metadata.json")}
    wide = [arg if arg != "network_features=[4, 8, 16]" else "network_features=[8, 16, 32]" for arg in args]
    code, _, err = run_cli(capsys, "bundle", "ship", str(bundle), str(checkpoint), *wide)
    assert code != 0
    assert str(checkpoint) in err and "nothing shipped" in err
    assert {path: path.read_bytes() for path in before} == before
    assert not list((bundle / "models").glob(".ship-*"))


def test_ship_refuses_a_checkpoint_without_weights(shippable, tmp_path, capsys):
    bundle, _, args = shippable
    not_weights = tmp_path / "notes.pt"
    not_weights.write_text("not a checkpoint")
    code, _, err = run_cli(capsys, "bundle", "ship", str(bundle), str(not_weights), *args)
    assert code != 0 and str(not_weights) in err


def test_ship_of_several_checkpoints_puts_their_ensemble_in_one_file(shippable, tmp_path, capsys):
    import torch

    from medseg.networks import ensemble_state_dict

    bundle, first, args = shippable
    second = tiny_unet_checkpoint(tmp_path / "run2" / "model.pt", seed=1)
    ensemble = [*args, "--set", "ensemble_members=2"]
    code, _, err = run_cli(capsys, "bundle", "ship", str(bundle), str(first), str(second), *ensemble)
    assert code == 0, err
    shipped = torch.load(bundle / "models" / "model.pt", weights_only=True)
    members = [torch.load(path, weights_only=True)["model"] for path in (first, second)]
    expected = ensemble_state_dict(members)
    assert shipped.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(shipped[name], value, msg=name)
    recorded = json.loads((bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
    # the two training outputs evaluated as an ensemble score what was recorded for the shipped file
    code, out, _ = run_cli(capsys, "evaluate", str(bundle), *args, "--checkpoint", str(first), "--checkpoint",
                           str(second))
    assert code == 0
    report = json.loads(Path(out.strip().splitlines()[-1].removeprefix("metrics written to ")).read_text())
    assert report["threshold_0.5"]["auc_roc"] == pytest.approx(recorded["test_auc_roc"], abs=1e-6)
    # and the shipped ensemble scores differently from either member alone
    code, out, _ = run_cli(capsys, "evaluate", str(bundle), *args, "--checkpoint", str(first))
    single = json.loads(Path(out.strip().splitlines()[-1].removeprefix("metrics written to ")).read_text())
    assert single["threshold_0.5"]["auc_roc"] != pytest.approx(recorded["test_auc_roc"], abs=1e-6)


def test_ship_of_one_network_into_an_ensemble_bundle_changes_nothing(shippable, capsys):
    bundle, checkpoint, args = shippable
    before = {path: path.read_bytes() for path in (bundle / "models" / "model.pt", bundle / "configs" / "metadata.json")}
    code, _, err = run_cli(capsys, "bundle", "ship", str(bundle), str(checkpoint), *args, "--set", "ensemble_members=2")
    assert code != 0
    assert f"{checkpoint} (1 network)" in err and "nothing shipped" in err
    assert {path: path.read_bytes() for path in before} == before


def test_evaluate_names_the_checkpoint_that_is_not_a_copy_of_the_first_network(shippable, tmp_path, capsys):
    import torch

    from medseg.networks import UNet

    bundle, first, args = shippable
    other = tmp_path / "other" / "model.pt"
    other.parent.mkdir()
    torch.save(UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(8, 16, 32)).state_dict(), other)
    code, _, err = run_cli(capsys, "evaluate", str(bundle), *args, "--checkpoint", str(first), "--checkpoint",
                           str(other))
    assert code == 1
    assert f"{other}: not the same network as the first member's weights" in err


def test_evaluate_of_an_ensemble_with_a_bundle_that_builds_one_network_names_the_checkpoints(tmp_path, capsys):
    u2net = BUNDLES / "drive_vessel_u2net"
    first, second = (tiny_unet_checkpoint(tmp_path / f"run{k}" / "model.pt", seed=k) for k in range(2))
    code, _, err = run_cli(capsys, "evaluate", str(u2net), "--checkpoint", str(first), "--checkpoint", str(second),
                           "--output-dir", str(tmp_path / "out"))
    assert code == 1
    assert f"{first}, {second}: the weights of an ensemble of 2 networks; {u2net} builds one network" in err
    assert not (tmp_path / "out").exists()


def test_list_on_a_terminal_fits_its_width_and_piped_keeps_every_cell_whole():
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    environment = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    done = subprocess.run([sys.executable, "-m", "medseg", "bundle", "list"], stdout=follower, env=environment,
                          timeout=120)
    os.close(follower)
    with os.fdopen(leader, "rb") as terminal:
        shown = terminal.read1(65536).decode().splitlines()
    assert done.returncode == 0
    assert len(shown) == 2 + len(list(BUNDLES.glob("*/configs/metadata.json")))
    assert max(len(line) for line in shown) <= 100 and shown[2].endswith("...")
    piped = subprocess.run([sys.executable, "-m", "medseg", "bundle", "list"], capture_output=True, text=True,
                           env=environment).stdout
    assert "test_specificity=" in piped


@pytest.mark.parametrize("command", [
    ["infer", "no_such_bundle", "image.png", "-o", "out"],
    ["train", "no_such_bundle"],
    ["evaluate", "no_such_bundle"],
    ["bundle", "info", "no_such_bundle"],
    ["bundle", "export", "no_such_bundle", "copy"],
    ["bundle", "ship", "no_such_bundle", "model.pt"],
])
def test_an_unknown_bundle_exits_1_with_one_line_in_every_command(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *command)
    assert code == 1 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"medseg {command[0]}: error: no_such_bundle: not a bundle folder")
    assert list(tmp_path.iterdir()) == []


def test_printed_commands_name_a_shipped_bundle_by_name_and_any_other_by_path(tmp_path):
    from medseg.cli import bundle_shown
    from medseg.resources import bundle_folder

    assert bundle_shown(bundle_folder("fundus_vessel_unet")) == "fundus_vessel_unet"
    copy = tmp_path / "fundus_vessel_unet"
    shutil.copytree(bundle_folder("fundus_vessel_unet") / "configs", copy / "configs")
    assert bundle_shown(copy) == str(copy)
