"""The README is a specification: its two commands work, and every command it shows is current."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from monai.utils import path_to_sqlite_uri

from medseg.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _block_after(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```sh\n(.*?)\n```", README, re.S)
    assert match, f"README has no sh block after <!-- {marker} -->"
    return match.group(1).strip()


def _shell_lines() -> list[str]:
    """Every command line of the README's sh blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)\n```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_ci_runs_exactly_the_readme_test_command():
    extracted = subprocess.run(
        ["bash", "-c", re.search(r"^cmd=\$\((.*)\)$", (REPO / ".ci" / "run").read_text(), re.M).group(1)],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert extracted == _block_after("test-command")
    assert "-m pytest" in extracted and "-c constraints.txt" in extracted


def test_set_up_pins_torch_through_the_constraints_file():
    pins = [line for line in (REPO / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert "torch==2.13.0" in pins
    for marker in ("main-command", "test-command"):
        assert "pip install -c constraints.txt" in _block_after(marker)


def test_every_medseg_command_in_the_readme_parses():
    parser = build_parser()
    # the section on your own photographs names a bundle its own commands make; tests/test_own_photographs.py runs them
    own = set(_block_after("own-photographs").splitlines())
    commands = [shlex.split(line) for line in _shell_lines()
                if line.startswith(("medseg ", ".venv/bin/medseg ")) and line not in own]
    assert len(commands) >= 10
    for argv in commands:
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"README command no longer parses: {shlex.join(argv)}")


def test_files_the_readme_names_exist():
    # paths are relative to the repository, or to the bundle folder the MONAI commands are run from
    roots = (REPO, REPO / "bundles" / "drive_vessel_unet")
    for path in re.findall(r"\b((?:bundles|configs|bench)/[\w./-]+\w)", README):
        assert any((root / path).exists() for root in roots), f"README names {path}, which does not exist"


def test_main_command_runs_the_demo_end_to_end(tmp_path):
    main_command = _block_after("main-command")
    assert main_command.endswith(".venv/bin/medseg demo")
    # the set-up part is what CI runs for the test command; here the installed medseg runs the job itself
    result = subprocess.run(
        [sys.executable, "-m", "medseg", "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "outputs" / "demo"
    assert (out / "preview.png").is_file()
    assert sorted(p.name for p in (out / "predictions").glob("*_mask.png")) == [f"0{i}_test_mask.png" for i in range(1, 5)]
    assert (out / "run" / "metrics_test.json").is_file()
    mlflow = Path(sys.executable).parent / "mlflow"  # by its path: on PATH only while the venv is active
    assert result.stdout.rstrip().endswith(f"{mlflow} ui --backend-store-uri {path_to_sqlite_uri(tmp_path / 'mlflow.db')}")
    client = MlflowClient(path_to_sqlite_uri(tmp_path / "mlflow.db"))
    runs = client.search_runs([client.get_experiment_by_name("medseg_demo").experiment_id])
    (run,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # the training
    (evaluation,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
    assert "test_f1" in evaluation.data.metrics
    assert run.data.metrics["val_f1"] > 0.5
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"best.pt", "metrics.json", "training_curves.png"}


def test_the_demo_tracks_every_step_in_the_store_it_is_given(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "medseg", "demo", "--images", "4", "--output", "demo_out", "--tracking-uri",
         "sqlite:///demo.db"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tracking lost" not in result.stdout + result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # the default store is left alone
    client = MlflowClient(path_to_sqlite_uri(tmp_path / "demo.db"))
    runs = client.search_runs([client.get_experiment_by_name("medseg_demo").experiment_id])
    (run,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (evaluation,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
    assert "test_f1" in evaluation.data.metrics


def test_the_bundle_table_quotes_the_eval_metrics_of_each_metadata():
    bundles = {p.name for p in (REPO / "bundles").iterdir() if p.is_dir()}
    assert set(re.findall(r"^\| `bundles/(\w+)` \|", README, re.M)) == bundles
    # the figures stand in the block bench/bundle_results.py renders from each metadata's eval_metrics
    headline = re.search(r"<!-- headline-results -->\n(.*?)<!-- /headline-results -->", README, re.S).group(1)
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", headline, re.M)
    assert {bundle for bundle, *_ in rows} == bundles
    for bundle, *quoted in rows:
        recorded = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
        for name, value in zip(("test_f1", "test_auc_roc", "test_miou"), quoted):
            if value.strip() != "-":
                assert float(value) == pytest.approx(recorded[name], abs=5e-5), (bundle, name)
        assert any(value.strip() != "-" for value in quoted), bundle


