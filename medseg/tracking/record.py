"""What a training run records: its params (the config's hyper-parameters), its tags (network, dataset, commit,
machine, command line), and the run id its output folder keeps, by which it is resumed and found again.

MLflow's run names are not unique, so a run is found by its id: each training writes it to ``RUN_ID_FILE`` in its
output folder (:func:`record_run_id`), a resumed training logs to that run, and evaluations and releases of the
folder's checkpoints nest under it (:mod:`medseg.tracking.runs`).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg import __version__
from medseg.utils import atomic_write_text

__all__ = [
    "COMMAND_TAG",
    "MACHINE_TAG",
    "RUN_CONTROL_IDS",
    "RUN_ID_FILE",
    "SEGMENT_START_METRIC",
    "cpu_instructions",
    "executed_config",
    "hyper_parameters",
    "machine_description",
    "record_run_id",
    "recorded_run_id",
    "run_tags",
    "training_run_name",
]

MACHINE_TAG, COMMAND_TAG = "medseg.machine", "medseg.command"
# the file in a training's output folder that holds the id of its MLflow run
RUN_ID_FILE = "mlflow_run_id.txt"
# logged by a training each time its process starts, fresh or resumed (medseg.tracking.handler), so that the time
# between a kill and its resume is left out of its wall minutes (medseg.tracking.training_record)
SEGMENT_START_METRIC = "segment_start"


# top-level ids that steer a run rather than describe its model: not logged as MLflow params (params cannot change
# within a run, and a resumed run sets resume: true)
RUN_CONTROL_IDS = frozenset({"bundle_root", "experiment_name", "run_name", "tracking_uri", "resume", "quiet",
                             "num_workers", "save_execute_config"})


def executed_config(save_execute_config: Any, output_dir: str | os.PathLike) -> str | None:
    """The file MONAI wrote the executed config to (its ``save_execute_config`` tracking setting), or ``None``.

    MONAI writes it to ``<output_dir>/config_<time>.json`` but names that path in the config only when
    ``output_dir`` is an expression; for a plain ``--output_dir`` the newest such file there is the one."""
    if isinstance(save_execute_config, str) and os.path.isfile(save_execute_config):
        return save_execute_config
    written = sorted(Path(output_dir).glob("config_*.json"), key=lambda path: path.stat().st_mtime)
    return str(written[-1]) if written else None


def hyper_parameters(config: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """The params of a training run: every top-level id of its executed config (the file MONAI's
    ``save_execute_config`` writes, :func:`executed_config`, or the config itself) whose value is a literal (a
    number, bool, null, plain string, or list of them) or a reference ``@id`` to one, except the
    :data:`RUN_CONTROL_IDS`. A new hyper-parameter is tracked by being written in the config; expressions (paths,
    devices, records) are not. ``None`` (no executed config written, e.g. on another rank than 0): none."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        from monai.bundle import ConfigParser

        config = ConfigParser.load_config_file(str(config))
    params = {}
    for key, value in config.items():
        if isinstance(value, str) and value.startswith("@") and value[1:] in config:
            value = config[value[1:]]
        if key not in RUN_CONTROL_IDS and _is_literal(value):
            params[key] = value
    return params


def _is_literal(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_literal(item) and not isinstance(item, list) for item in value)
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    return value is None or isinstance(value, (bool, int, float))


def run_tags(network: str, dataset: str, **extra: str) -> dict[str, str]:
    """MLflow run tags: ``network``, ``dataset``, ``git_commit``, ``medseg_version``, ``medseg.machine``
    (:func:`machine_description`), ``medseg.command`` (the command line that started the run), MLflow's standard
    source tags (``mlflow.source.git.commit``, ``mlflow.source.name``, ``mlflow.source.type``), plus ``extra``."""
    commit = _git_commit()
    source = {"mlflow.source.name": "medseg", "mlflow.source.type": "LOCAL"}
    if commit != "unknown":
        source["mlflow.source.git.commit"] = commit
    return {"network": network, "dataset": dataset, "git_commit": commit, "medseg_version": __version__,
            MACHINE_TAG: machine_description(), COMMAND_TAG: _command_line(), **source, **extra}


# the widest matrix instructions a CPU offers, most capable first: what decides its bf16 and int8 speed, and so what
# a figure measured on it means (two "AMD EPYC" hosts differ by AVX512-BF16 or AVX2 alone)
CPU_INSTRUCTIONS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2"))


def cpu_instructions() -> str | None:
    """This CPU's widest matrix instructions as :data:`CPU_INSTRUCTIONS` names them (``"AVX512-BF16"``), else
    ``None``: what bfloat16 and int8 speeds, and a bundle's window choice, depend on."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo if line.startswith("flags")), set())
    return next((name for flag, name in CPU_INSTRUCTIONS if flag in flags), None)


def machine_description() -> str:
    """Where a run computes, as a training record names it: the GPU when torch sees one, else the CPU's model
    name, its widest matrix instructions (:func:`cpu_instructions`) and its cores, e.g. "AMD EPYC (AVX2), 2 cores"."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    instructions = cpu_instructions()
    widest = f" ({instructions})" if instructions else ""
    return f"{names[0] if names else platform.processor() or platform.machine()}{widest}, {os.cpu_count()} cores"


def _command_line() -> str:
    """The command that started this process, as its user typed it: ``medseg ...`` (the console script or
    ``python -m medseg``), ``python -m MODULE ...`` (the module ``-m`` ran, e.g. ``monai.bundle``) or
    ``python SCRIPT ...``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # set when python -m ran a module
    module = spec.name.removesuffix(".__main__") if spec is not None else None
    if module == "medseg" or (module is None and Path(sys.argv[0]).name == "medseg"):
        name = ["medseg"]
    elif module is not None:
        name = ["python", "-m", module]
    else:
        name = ["python", Path(sys.argv[0]).name]
    return shlex.join([*name, *sys.argv[1:]])


def _git_commit() -> str:
    """The commit of the medseg checkout in use, ``unknown`` outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip()


def training_run_name(output_dir: str | os.PathLike, resume: bool = False) -> str:
    """A new MLflow run name for the training that writes to ``output_dir``: ``run_<start time>_<output folder
    name>`` (the folder keeps an ensemble's members, started in the same second, apart). A new training (not
    ``resume``) also forgets the run the folder recorded, so that its handlers start a new one; a resumed training
    logs to the recorded run (:func:`recorded_run_id`), whatever its name."""
    if not resume:
        (Path(output_dir) / RUN_ID_FILE).unlink(missing_ok=True)
    return f"run_{time.strftime('%Y%m%d_%H%M%S')}_{Path(output_dir).resolve().name}"


def record_run_id(output_dir: str | os.PathLike, run_id: str) -> None:
    """Write ``run_id`` to ``output_dir``'s ``RUN_ID_FILE``: the run its training logs to."""
    atomic_write_text(Path(output_dir) / RUN_ID_FILE, run_id + "\n")


def recorded_run_id(output_dir: str | os.PathLike) -> str | None:
    """The id of the MLflow run the training into ``output_dir`` logs to, or ``None`` where none is recorded."""
    record = Path(output_dir) / RUN_ID_FILE
    if not record.is_file():
        return None
    return record.read_text().strip() or None
