"""Training you can watch: one line per epoch (a bar too on a terminal) with the loss, the best validation metric
and the time left of a budget; ``--quiet`` for scripts; an ensemble's members on the console with their prefix."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from monai.utils import path_to_sqlite_uri

from medseg.cli import main, mlflow_ui_command
from medseg.data.synthetic import ensure_synthetic_drive

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "drive_vessel_unet"
TINY = ["--set", "network_features=[4,8]", "--set", "patch_size=[32,32]", "--set", "roi_size=[64,64]",
        "--set", "val_images=1", "--set", "batch_images=2", "--set", "patches_per_image=2", "--set", "val_interval=1"]
LINE = re.compile(r"^epoch (\d+)(/\d+)?  loss \d\.\d{4}  (val_f1 \d\.\d{4}  )?best val_f1 \d\.\d{4} \(epoch \d+\)")


@pytest.fixture(scope="module")
def synthetic_drive(tmp_path_factory) -> Path:
    return ensure_synthetic_drive(tmp_path_factory.mktemp("data") / "drive", n_training=4, n_test=1, seed=2)


def train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", str(BUNDLE), "--data-root", str(data), *TINY, *extra, "--output-dir", str(out),
                 "--tracking-uri", path_to_sqlite_uri(out.parent / f"{out.name}.db")])


def test_each_epoch_prints_its_loss_its_validation_metric_and_the_best_one(synthetic_drive, tmp_path, capsys):
    assert train(synthetic_drive, tmp_path / "run", "--set", "ensemble_members=1", "--set", "max_epochs=2") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if LINE.match(line)]
    assert [LINE.match(line).group(1, 2) for line in lines] == [("1", "/2"), ("2", "/2")]
    assert all(LINE.match(line).group(3) for line in lines)  # val_interval=1: each epoch validated


def test_the_loss_an_epoch_line_shows_is_the_mean_of_its_iterations_losses_in_mlflow(synthetic_drive, tmp_path, capsys):
    assert train(synthetic_drive, tmp_path / "run", "--set", "ensemble_members=1", "--set", "max_epochs=2") == 0
    shown = [float(LINE.match(line).group(0).split("loss ")[1].split()[0])
             for line in capsys.readouterr().err.splitlines() if LINE.match(line)]
    client = MlflowClient(path_to_sqlite_uri(tmp_path / "run.db"))
    (run,) = client.search_runs([client.get_experiment_by_name("drive_vessel_unet").experiment_id])
    losses = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda metric: metric.step)
    per_epoch = len(losses) // 2
    assert per_epoch > 1  # a last batch's loss would differ from the mean
    means = [sum(metric.value for metric in losses[k * per_epoch:(k + 1) * per_epoch]) / per_epoch for k in (0, 1)]
    assert shown == pytest.approx(means, abs=6e-5)


def test_an_epoch_without_validation_shows_only_the_best_metric_so_far(synthetic_drive, tmp_path, capsys):
    assert train(synthetic_drive, tmp_path / "run", "--set", "ensemble_members=1", "--set", "max_epochs=2",
                 "--set", "val_interval=2") == 0
    first, second = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert re.fullmatch(r"epoch 1/2  loss \d\.\d{4}", first)
    assert LINE.match(second).group(3)


def test_a_budgeted_run_shows_the_time_left(synthetic_drive, tmp_path, capsys):
    assert train(synthetic_drive, tmp_path / "run", "--set", "ensemble_members=1", "--set", "max_epochs=2",
                 "--set", "time_budget_minutes=10") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if LINE.match(line)]
    assert len(lines) == 2 and all(re.search(r"  9:\d\d of the budget left$", line) for line in lines)


def test_verbose_also_prints_the_libraries_records(synthetic_drive, tmp_path, capfd):
    assert train(synthetic_drive, tmp_path / "run", "--set", "ensemble_members=1", "--set", "max_epochs=1",
                 "--verbose") == 0
    console = "".join(capfd.readouterr())
    assert "Epoch[1] Metrics -- " in console and "Saved checkpoint at epoch" in console
    assert len([line for line in console.splitlines() if LINE.match(line)]) == 1


def test_quiet_prints_no_progress(synthetic_drive, tmp_path, capsys):
    assert train(synthetic_drive, tmp_path / "run", "--set", "ensemble_members=1", "--set", "max_epochs=1",
                 "--quiet") == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]


def test_ensemble_members_show_their_progress_with_their_prefix_and_keep_their_logs(synthetic_drive, tmp_path, capsys):
    assert train(synthetic_drive, tmp_path / "run", "--set", "ensemble_members=2", "--set", "max_epochs=1") == 0
    out = capsys.readouterr().out
    for k in (0, 1):
        assert re.search(rf"^member {k}: epoch 1/1  loss ", out, re.M)
        log = (tmp_path / "run" / f"member{k}" / "train.log").read_text()
        assert "epoch 1/1  loss " in log and "Epoch[1] Metrics -- " in log  # the full log, the libraries' too
    assert "Metrics -- " not in out


def test_a_training_prints_each_epoch_once_and_none_of_the_libraries_noise(synthetic_drive, tmp_path, capfd):
    overlay = tmp_path / "two_epochs.yaml"  # an overlay outside the bundle's configs/, as users write them
    overlay.write_text("max_epochs: 2\n")
    assert train(synthetic_drive, tmp_path / "run", "--set", "ensemble_members=1", "--config", str(overlay),
                 "--set", "autocast_dtype=auto") == 0
    console = "".join(capfd.readouterr())
    assert len([line for line in console.splitlines() if LINE.match(line)]) == 2
    # ignite's and MONAI's INFO records repeat what the epoch line and MLflow hold: not printed (--verbose prints them)
    for library_line in ("Epoch[2] Metrics -- ", "Key metric: val_f1 best value", "Saved checkpoint at epoch",
                         "Engine run resuming", "Creating initial MLflow database tables", " - INFO - "):
        assert library_line not in console
    # medseg's records once, as "INFO: ...", though the bundle's logging.conf gave the root logger a console handler
    assert len(re.findall(r"^INFO: training in (float32|bfloat16 autocast) \(auto: ", console, re.M)) == 1
    assert not re.search(r" - medseg\.[\w.]+ - ", console)
    # nor the fundus scale of the example MLflow runs the logged model on, which is no photograph of the user's
    for noise in ("Not all config files are in", "serialized using CloudPickle", "no dark background", "input: scale",
                  "Validating input example"):
        assert noise not in console
    # the environment's mlflow by its path: its bin/ is on PATH only while the environment is active
    assert f"review the run: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri " in console


def test_the_mlflow_ui_command_names_the_mlflow_beside_this_python():
    command = shlex.split(mlflow_ui_command("sqlite:///runs.db"))
    assert command == [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", "sqlite:///runs.db"]
    assert Path(command[0]).is_file()
