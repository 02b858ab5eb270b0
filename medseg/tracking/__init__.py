"""MLflow tracking: the default store, a fail-fast server check, and the table of runs behind ``medseg runs``.

By default runs go to an embedded SQLite store, ``<cwd>/mlflow.db`` (artifacts in ``<cwd>/mlruns``,
MONAI's ``MLFlowHandler`` default layout). Any MLflow tracking URI works instead, including a real
``mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`` reached as
``http://127.0.0.1:5000``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from monai.utils import path_to_sqlite_uri

from medseg import __version__
from medseg.utils import atomic_write_text, format_table

__all__ = [
    "COMMAND_TAG",
    "MACHINE_TAG",
    "DEFAULT_RUN_METRICS",
    "DEFAULT_RUN_PARAMS",
    "DEFAULT_RUN_TAGS",
    "RUN_CONTROL_IDS",
    "SEGMENT_START_METRIC",
    "TrackingServerError",
    "EXPERIMENT_KIND_TAG",
    "check_tracking_server",
    "default_tracking_uri",
    "ensemble_parent_run",
    "evaluation_tags",
    "executed_config",
    "log_ensemble_metrics",
    "machine_description",
    "hyper_parameters",
    "prepare_tracking_store",
    "run_tags",
    "source_run_tags",
    "training_record",
    "resumable_run_name",
    "runs_table",
    "tag_experiment_kind",
]

DEFAULT_RUN_TAGS = ("network", "dataset")
DEFAULT_RUN_PARAMS = ("max_epochs",)
# logged by a training each time its process starts, fresh or resumed (medseg.tracking.handler), so that the time
# between a kill and its resume is left out of its wall minutes (training_record)
SEGMENT_START_METRIC = "segment_start"
DEFAULT_RUN_METRICS = ("train_loss", "best_metric", "best_metric_epoch", "val_f1", "val_auc_roc", "val_miou", "test_f1",
                       "test_auc_roc", "test_miou")


class TrackingServerError(RuntimeError):
    """The MLflow tracking server cannot be reached."""


def default_tracking_uri() -> str:
    """``sqlite:///<cwd>/mlflow.db``: an embedded store needing no server."""
    return path_to_sqlite_uri(os.path.join(os.getcwd(), "mlflow.db"))


def prepare_tracking_store(uri: str) -> None:
    """Create the tracking store behind ``uri`` unless it exists (for a new SQLite file: its schema), so that runs
    started at the same time only add to it; each creating it would race."""
    MlflowClient(uri).search_experiments(max_results=1)


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


MACHINE_TAG, COMMAND_TAG = "medseg.machine", "medseg.command"


def machine_description() -> str:
    """Where a run computes, as a training record names it: the GPU when torch sees one, else the CPU's model
    name and its cores."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"


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


# MLflow's UI opens an experiment with this tag on its runs table and metric charts (not the GenAI overview)
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


def tag_experiment_kind(client: MlflowClient, experiment_id: str) -> None:
    """Mark an experiment as model training, unless it says what it is already."""
    key, value = EXPERIMENT_KIND_TAG
    if key not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, key, value)


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Raise ``TrackingServerError`` at once when ``uri`` is an http(s) MLflow server that does not answer its
    ``/health`` endpoint within ``timeout`` seconds; call it before training starts. Other URIs (SQLite,
    databases) need no server and pass."""
    if not uri.startswith(("http://", "https://")):
        return
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingServerError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it (mlflow server --host 127.0.0.1 "
            f"--port PORT) or use the embedded store {default_tracking_uri()}"
        ) from err
    if status != 200:
        raise TrackingServerError(f"MLflow tracking server {uri} answered {health} with HTTP {status}, not 200")


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def _format_value(value: float | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 and value != int(value) else f"{value:g}"
    return str(value)


def runs_table(
    tracking_uri: str,
    experiment_name: str | None = None,
    tags: Sequence[str] = DEFAULT_RUN_TAGS,
    params: Sequence[str] = DEFAULT_RUN_PARAMS,
    metrics: Sequence[str] = DEFAULT_RUN_METRICS,
    max_runs: int = 100,
    filter_string: str = "",
) -> str:
    """A text table of the MLflow runs, newest first: experiment, run name, status, start time, duration,
    then the given tags, params and metrics (latest value; validation and test side by side). Columns that no run
    has are left out. ``filter_string`` selects runs in MLflow's search syntax (``"metrics.val_f1 > 0.8"``).

    Raises:
        FileNotFoundError: a SQLite ``tracking_uri`` whose database does not exist (nothing was tracked yet).
        ValueError: no experiment named ``experiment_name``.
    """
    database = _sqlite_path(tracking_uri)
    if database is not None and not database.is_file():
        raise FileNotFoundError(f"no MLflow database at {database}: no run was tracked there yet")
    client = MlflowClient(tracking_uri=tracking_uri)
    if experiment_name is None:
        experiments = list(client.search_experiments())
    else:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise ValueError(f"no MLflow experiment named {experiment_name!r} at {tracking_uri} (known: {known})")
        experiments = [experiment]
    names = {e.experiment_id: e.name for e in experiments}
    runs = list(client.search_runs(list(names), filter_string=filter_string, max_results=max_runs,
                                   order_by=["attributes.start_time DESC"]))
    if not runs:
        return f"No MLflow runs at {tracking_uri}" + (f" in experiment {experiment_name!r}" if experiment_name else "")

    columns = [("tag", key) for key in tags if any(key in run.data.tags for run in runs)]
    columns += [("param", key) for key in params if any(key in run.data.params for run in runs)]
    columns += [("metric", key) for key in metrics if any(key in run.data.metrics for run in runs)]
    header = ["run_id", "experiment", "run_name", "status", "start", "duration", *(key for _, key in columns)]
    rows = []
    for run in runs:
        info, data = run.info, run.data
        end = info.end_time or (int(time.time() * 1000) if info.status == "RUNNING" else None)
        duration = "-" if end is None else f"{(end - info.start_time) / 60000:.1f} min"
        sources = {"tag": data.tags, "param": data.params, "metric": data.metrics}
        rows.append(
            [
                info.run_id[:8],
                names[info.experiment_id],
                info.run_name or "-",
                info.status,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(info.start_time / 1000)),
                duration,
                *(_format_value(sources[kind].get(key)) for kind, key in columns),
            ]
        )
    return format_table(header, rows)


def evaluation_tags(checkpoints: Sequence[str | os.PathLike], tracking_uri: str, experiment_name: str) -> dict[str, str]:
    """Tags of an evaluation run: the sha256 of the weights evaluated (``medseg.weights_sha256``) and the
    :func:`source_run_tags` of the training they came from."""
    from medseg.tracking.models import sha256_of

    return {"medseg.weights_sha256": ",".join(sha256_of(path) for path in checkpoints),
            **source_run_tags(checkpoints, tracking_uri, experiment_name)}


def source_run_tags(checkpoints: Sequence[str | os.PathLike], tracking_uri: str, experiment_name: str) -> dict[str, str]:
    """The training run ``checkpoints`` came from, as ``medseg.source_run`` and as MLflow's ``mlflow.parentRunId``,
    so a run tagged with them sits nested under it: for one checkpoint that a ``medseg train`` run wrote
    (``OUTPUT/checkpoints/*.pt`` beside ``OUTPUT/mlflow_run_name.txt``), that run; for the members of one ensemble
    (``OUTPUT/member<k>/checkpoints/*.pt``), the ensemble's run. Empty when there is no such run."""
    record = _run_name_record(checkpoints)
    if record is None:
        return {}
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return {}
    name = record.read_text().strip().replace("'", "\\'")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.runName = '{name}'", max_results=1)
    if not runs:
        return {}
    return {"medseg.source_run": runs[0].info.run_id, "mlflow.parentRunId": runs[0].info.run_id}


def training_record(checkpoints: Sequence[str | os.PathLike], tracking_uri: str, experiment_name: str) -> dict | None:
    """What a bundle's metadata records of the training behind ``checkpoints`` (``medseg.training``), from the
    MLflow run they came from (:func:`source_run_tags`): the day it started, its machine and command (its
    ``medseg.machine`` and ``medseg.command`` tags), its wall time in minutes and the training steps of each
    network (an ensemble's members are its child runs, in member order). ``None`` when there is no such run."""
    source = source_run_tags(checkpoints, tracking_uri, experiment_name).get("medseg.source_run")
    if source is None:
        return None
    client = MlflowClient(tracking_uri)
    run = client.get_run(source)
    members = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{source}'")
    # a member's run is named after its folder, member<k>
    networks = sorted(members, key=lambda member: int(re.sub(r"\D", "", member.info.run_name.rsplit("_", 1)[-1]) or 0))
    networks = networks or [run]
    end = (run.info.end_time or int(time.time() * 1000)) - _downtime_ms(client, networks)  # active time only
    return {
        "date": datetime.date.fromtimestamp(run.info.start_time / 1000).isoformat(),
        "machine": run.data.tags.get(MACHINE_TAG, "not recorded"),
        "command": run.data.tags.get(COMMAND_TAG, "not recorded"),
        "wall_minutes": round((end - run.info.start_time) / 60000, 1),
        "steps": [max((m.step for m in client.get_metric_history(network.info.run_id, "train_loss")), default=0)
                  for network in networks],
    }


def _downtime_ms(client: MlflowClient, networks: Sequence[Any]) -> int:
    """Milliseconds in which a training waited for a resume: the spans from a network's last ``train_loss`` before
    a resumed start (:data:`SEGMENT_START_METRIC`) to that start, less the time another network ran meanwhile."""
    waits, runs = [], []
    for network in networks:
        starts = sorted(m.timestamp for m in client.get_metric_history(network.info.run_id, SEGMENT_START_METRIC))
        losses = sorted(m.timestamp for m in client.get_metric_history(network.info.run_id, "train_loss"))
        for start, next_start in zip(starts, [*starts[1:], math.inf]):
            logged = [t for t in losses if start <= t < next_start]
            runs += [(start, logged[-1])] if logged else []
            waits += [(logged[-1], next_start)] if logged and next_start < math.inf else []
    ran = _union(runs)
    return sum(end - begin - sum(max(0, min(end, stop) - max(begin, go)) for go, stop in ran)
               for begin, end in _union(waits))


def _union(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The disjoint spans covering ``spans`` (``(begin, end)`` pairs), in order."""
    union: list[tuple[int, int]] = []
    for begin, end in sorted(spans):
        if union and begin <= union[-1][1]:
            union[-1] = (union[-1][0], max(union[-1][1], end))
        else:
            union.append((begin, end))
    return union


def _run_name_record(checkpoints: Sequence[str | os.PathLike]) -> Path | None:
    """The run-name record of the training that wrote ``checkpoints``: one run's folder, or an ensemble's (its
    members' folders ``member<k>`` side by side)."""
    folders = {Path(checkpoint).resolve().parent.parent for checkpoint in checkpoints}
    if len(folders) > 1:
        parents = {folder.parent for folder in folders}
        if len(parents) > 1 or not all(folder.name.startswith("member") for folder in folders):
            return None
        folders = parents
    record = folders.pop() / "mlflow_run_name.txt"
    return record if record.is_file() else None


def ensemble_parent_run(
    tracking_uri: str,
    experiment_name: str,
    output_dir: str | os.PathLike,
    resume: bool,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
) -> str:
    """The id of the MLflow run of an ensemble trained into ``output_dir``, the parent of its members' runs (they
    carry ``mlflow.parentRunId``), with ``params`` (members, seeds) and ``tags`` (:func:`run_tags`). A resumed
    ensemble reuses the run it started (by the name recorded in ``output_dir``, :func:`resumable_run_name`)."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    tag_experiment_kind(client, experiment_id)
    name = resumable_run_name(output_dir, resume)
    if resume:
        quoted = name.replace("'", "\\'")
        found = client.search_runs([experiment_id], filter_string=f"tags.mlflow.runName = '{quoted}'", max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
    note = ("An ensemble: its members are the child runs; its metrics are the ensemble's own, evaluated on the "
            "validation images.")
    run = client.create_run(experiment_id, run_name=name, tags={**tags, "mlflow.note.content": note})
    client.log_batch(run.info.run_id, params=[Param(key, str(value)) for key, value in params.items()])
    return run.info.run_id


def log_ensemble_metrics(tracking_uri: str, run_id: str, report_path: str | os.PathLike, failed: bool = False) -> None:
    """End the ensemble's parent run ``run_id``: the metrics of the ensemble's validation report (at threshold 0.5,
    as ``val_<name>``; a CamVid report's ``val`` section likewise) and the report as an artefact, or, with
    ``failed``, only its status."""
    client = MlflowClient(tracking_uri)
    if not failed:
        report = json.loads(Path(report_path).read_text())
        section = report.get("threshold_0.5") or report.get("val") or {}
        metrics = [Metric(f"val_{key}", float(value), int(time.time() * 1000), 0) for key, value in section.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "threshold"]
        client.log_batch(run_id, metrics=metrics)
        client.log_artifact(run_id, str(report_path))
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def resumable_run_name(output_dir: str | os.PathLike, resume: bool = False) -> str:
    """The MLflow run name of the training that writes to ``output_dir``.

    A new training gets a new name, ``run_<start time>_<output folder name>``, recorded in
    ``<output_dir>/mlflow_run_name.txt``; a resumed one reuses the recorded name, so MONAI's ``MLFlowHandler`` picks
    up the unfinished run it left and the resumed epochs are logged to the same MLflow run. The folder name keeps
    trainings started in the same second apart (the members of an ensemble), since the handler would otherwise
    join them into one run.
    """
    record = Path(output_dir) / "mlflow_run_name.txt"
    if resume and record.is_file():
        return record.read_text().strip()
    name = f"run_{time.strftime('%Y%m%d_%H%M%S')}_{Path(output_dir).resolve().name}"
    atomic_write_text(record, name + "\n")
    return name
