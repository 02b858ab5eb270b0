"""medseg as a package: what the wheel holds, the version floors it claims, and a fresh install outside the clone."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from monai.handlers import CheckpointSaver, MLFlowHandler
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SOURCE = "\n".join(path.read_text() for path in (REPO / "medseg").rglob("*.py"))


def floor(distribution: str) -> Version:
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == distribution:
            (bound,) = [s for s in requirement.specifier if s.operator == ">="]
            return Version(bound.version)
    raise AssertionError(f"{distribution} is not a dependency")


def test_the_wheel_lists_every_package_of_the_source_tree_and_maps_bundles_and_configs():
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "medseg").rglob("__init__.py")}
    assert packages == on_disk | {"medseg.bundles", "medseg.configs"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"medseg.bundles": "bundles", "medseg.configs": "configs"}


def test_version_floors_are_those_the_code_needs_and_the_tests_run():
    python_floor = Version(PYPROJECT["project"]["requires-python"].removeprefix(">="))
    if "contextlib.chdir" in SOURCE:
        assert python_floor >= Version("3.11")
    if "np.trapezoid" in SOURCE:
        assert floor("numpy") >= Version("2.0")
    # MONAI's and MLflow's internals that medseg overrides or reads were written against the tested releases:
    # the floor is the minor release the tests run
    for distribution in ("monai", "mlflow"):
        installed = Version(importlib.metadata.version(distribution))
        assert floor(distribution) <= installed
        assert (floor(distribution).major, floor(distribution).minor) == (installed.major, installed.minor), (
            f"the tests run {distribution} {installed}: its floor in pyproject.toml is {floor(distribution)}")
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        assert importlib.metadata.version(requirement.name) in requirement.specifier, line


def test_the_monai_internals_medseg_overrides_are_still_there():
    # medseg.engines.checkpoint swaps the save handlers of these; medseg.tracking.handler wraps _set_experiment
    saver = CheckpointSaver(save_dir=".", save_dict={"network": torch.nn.Linear(1, 1)}, save_final=True,
                            save_key_metric=True, save_interval=1)
    for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
        assert hasattr(saver, name) and hasattr(getattr(saver, name), "save_handler"), name
    assert callable(getattr(MLFlowHandler, "_set_experiment", None))


def run(command: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_wheel_installs_into_a_fresh_venv_and_runs_outside_the_clone(tmp_path):
    commands = re.search(r"<!-- wheel-install -->\s*```sh\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)
    assert commands, "the README shows how to install the wheel"
    for expected in ("pip wheel . --no-deps -w dist", "pip install -c constraints.txt dist/medseg-"):
        assert expected in commands.group(1)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(dist)], cwd=tmp_path)
    (wheel,) = dist.glob("medseg-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python, medseg = venv / "bin" / "python", venv / "bin" / "medseg"
    run([str(python), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), str(wheel)], cwd=tmp_path)

    work = tmp_path / "work"  # outside the clone: nothing of it is importable from here
    work.mkdir()
    located = run([str(python), "-c", "import medseg, medseg.resources as r; print(medseg.__file__); "
                   "print(r.bundles_root())"], cwd=work).stdout.split()
    site_packages = Path(located[0]).parent
    assert site_packages.is_relative_to(venv) and Path(located[1]) == site_packages / "bundles"
    installed = sorted(site_packages.rglob("*"))

    listing = run([str(medseg), "bundle", "list"], cwd=work).stdout
    assert {"camvid_unet", "drive_vessel_unet", "drive_vessel_u2net", "fundus_vessel_unet"} <= set(re.findall(r"^(\w+) ", listing, re.M))
    run([str(medseg), "demo"], cwd=work)
    assert (work / "mlflow.db").is_file() and (work / "outputs" / "demo" / "run" / "metrics_test.json").is_file()
    images = work / "outputs" / "demo" / "synthetic_drive" / "test" / "images"
    run([str(medseg), "infer", "drive_vessel_unet", str(images), "-o", "predictions"], cwd=work)
    assert len(list((work / "predictions").glob("*_mask.png"))) == 4

    exported = work / "my_bundle"
    run([str(medseg), "bundle", "export", "drive_vessel_unet", str(exported)], cwd=work)
    run([str(python), "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
         "--input_files", f"['{images}']", "--output_dir", str(work / "monai_predictions")], cwd=exported)
    assert len(list((work / "monai_predictions").glob("*_mask.png"))) == 4
    without_data = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "MEDSEG_DATA_ROOT")}
    missing = subprocess.run([str(medseg), "evaluate", "drive_vessel_unet"], cwd=work, capture_output=True,
                             text=True, timeout=300, env=without_data)
    assert missing.returncode == 1 and "site-packages" not in missing.stderr, missing.stderr
    assert "--data-root" in missing.stderr and "MEDSEG_DATA_ROOT" in missing.stderr
    assert not list((work / "outputs" / "drive_vessel_unet").glob("config_*.json"))
    assert sorted(site_packages.rglob("*")) == installed  # nothing written into the installed package
    shutil.rmtree(venv)


def test_bundles_and_overlays_are_found_by_name_or_by_the_repository_path_from_anywhere(tmp_path, monkeypatch):
    from medseg.resources import bundle_folder, bundles_root, configs_root, overlay_file

    monkeypatch.chdir(tmp_path)
    for spelling in ("drive_vessel_unet", "bundles/drive_vessel_unet"):
        assert bundle_folder(spelling) == (bundles_root() / "drive_vessel_unet").resolve()
    for spelling in ("cpu_budget", "cpu_budget.yaml", "configs/cpu_budget.yaml"):
        assert overlay_file(spelling) == configs_root() / "cpu_budget.yaml"
    local = tmp_path / "mine.yaml"
    local.write_text("max_epochs: 1\n")
    assert overlay_file("mine.yaml") == local
    with pytest.raises(FileNotFoundError, match="shipped: .*drive_vessel_unet"):
        bundle_folder("no_such_bundle")
    with pytest.raises(FileNotFoundError, match="shipped: .*cpu_budget"):
        overlay_file("elsewhere/cpu_budget.yaml")


def test_an_installed_bundle_looks_for_its_data_in_medseg_data_root_else_the_working_directory(tmp_path,
                                                                                                monkeypatch):
    import medseg
    from medseg.resources import bundles_root, data_root

    installed = Path(medseg.__file__).parent / "bundles" / "drive_vessel_unet"  # where the wheel puts it
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDSEG_DATA_ROOT", raising=False)
    assert data_root(installed) == str(tmp_path / "data")
    cloned = bundles_root() / "drive_vessel_unet"
    assert Path(data_root(cloned)).resolve() == REPO.parent / "shared" / "data"
    monkeypatch.setenv("MEDSEG_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert data_root(installed) == data_root(cloned) == str(tmp_path / "elsewhere")
