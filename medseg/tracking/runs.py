"""Reading runs back: the table behind ``medseg runs``, the training run that checkpoints came from, and the
training record a released bundle's metadata keeps."""

from __future__ import annotations

import datetime
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medseg.tracking.record import COMMAND_TAG, MACHINE_TAG, SEGMENT_START_METRIC, recorded_run_id
from medseg.tracking.store import sqlite_path, tracking_at
from medseg.utils import format_table

__all__ = [
    "DEFAULT_RUN_METRICS",
    "DEFAULT_RUN_PARAMS",
    "DEFAULT_RUN_TAGS",
    "evaluation_tags",
    "runs_table",
    "source_run_id",
    "source_run_tags",
    "training_record",
]

DEFAULT_RUN_TAGS = ("network", "dataset")
DEFAULT_RUN_PARAMS = ("max_epochs",)
DEFAULT_RUN_METRICS = ("train_loss", "best_metric", "best_metric_epoch", "val_f1", "val_auc_roc", "val_miou", "test_f1",
                       "test_auc_roc", "test_miou")


def runs_table(
    tracking_uri: str,
    experiment_name: str | None = None,
    tags: Sequence[str] = DEFAULT_RUN_TAGS,
    params: Sequence[str] = DEFAULT_RUN_PARAMS,
    metrics: Sequence[str] = DEFAULT_RUN_METRICS,
    max_runs: int = 100,
    filter_string: str = "",
) -> str:
    """A text table of the MLflow runs, newest first (``mlflow.search_runs``): experiment, run name, status, start
    time, duration, then the given tags, params and metrics (latest value; validation and test side by side).
    Columns that no run has are left out. ``filter_string`` selects runs in MLflow's search syntax
    (``"metrics.val_f1 > 0.8"``).

    Raises:
        FileNotFoundError: a SQLite ``tracking_uri`` whose database does not exist (nothing was tracked yet).
        ValueError: no experiment named ``experiment_name``.
    """
    database = sqlite_path(tracking_uri)
    if database is not None and not database.is_file():
        raise FileNotFoundError(f"no MLflow database at {database}: no run was tracked there yet")
    names = _experiment_names(MlflowClient(tracking_uri), tracking_uri, experiment_name)
    with tracking_at(tracking_uri):
        runs = mlflow.search_runs(list(names), filter_string=filter_string, max_results=max_runs,
                                  order_by=["attributes.start_time DESC"], output_format="pandas")
    if runs.empty:
        return f"No MLflow runs at {tracking_uri}" + (f" in experiment {experiment_name!r}" if experiment_name else "")
    columns = [f"{kind}.{key}" for kind, keys in (("tags", tags), ("params", params), ("metrics", metrics))
               for key in keys if f"{kind}.{key}" in runs and runs[f"{kind}.{key}"].notna().any()]
    header = ["run_id", "experiment", "run_name", "status", "start", "duration",
              *(column.split(".", 1)[1] for column in columns)]
    rows = [[run["run_id"][:8], names[run["experiment_id"]], run.get("tags.mlflow.runName") or "-", run["status"],
             time.strftime("%Y-%m-%d %H:%M", time.localtime(run["start_time"].timestamp())), _duration(run),
             *(_format_value(run[column]) for column in columns)] for _, run in runs.iterrows()]
    return format_table(header, rows)


def _experiment_names(client: MlflowClient, tracking_uri: str, experiment_name: str | None) -> dict[str, str]:
    """``{experiment id: name}`` of every experiment, or of the one named."""
    if experiment_name is None:
        return {e.experiment_id: e.name for e in client.search_experiments()}
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ValueError(f"no MLflow experiment named {experiment_name!r} at {tracking_uri} (known: {known})")
    return {experiment.experiment_id: experiment.name}


def _duration(run) -> str:
    """A search result's duration in minutes, a running run's so far; ``-`` for a run that stopped unended."""
    end = run["end_time"]
    if end is None or end != end:  # NaT: not ended
        if run["status"] != "RUNNING":
            return "-"
        end = datetime.datetime.now(datetime.timezone.utc)
    return f"{(end - run['start_time']).total_seconds() / 60:.1f} min"


def _format_value(value: float | str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 and value != int(value) else f"{value:g}"
    return str(value)


def evaluation_tags(checkpoints: Sequence[str | os.PathLike], tracking_uri: str) -> dict[str, str]:
    """Tags of an evaluation run: the sha256 of the weights evaluated (``medseg.weights_sha256``) and the
    :func:`source_run_tags` of the training they came from."""
    from medseg.tracking.models import sha256_of

    return {"medseg.weights_sha256": ",".join(sha256_of(path) for path in checkpoints),
            **source_run_tags(checkpoints, tracking_uri)}


def source_run_id(checkpoints: Sequence[str | os.PathLike], tracking_uri: str) -> str | None:
    """The id of the training run ``checkpoints`` came from, as its output folder recorded it
    (:func:`medseg.tracking.record_run_id`) and the store at ``tracking_uri`` holds it: for one checkpoint that a
    ``medseg train`` run wrote (``OUTPUT/checkpoints/*.pt``), that run; for the members of one ensemble
    (``OUTPUT/member<k>/checkpoints/*.pt``), the ensemble's run. ``None`` when there is no such run."""
    folder = _training_folder(checkpoints)
    run_id = recorded_run_id(folder) if folder is not None else None
    if run_id is None:
        return None
    try:
        MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException:  # recorded in another store, or deleted
        return None
    return run_id


def source_run_tags(checkpoints: Sequence[str | os.PathLike], tracking_uri: str) -> dict[str, str]:
    """The training run ``checkpoints`` came from (:func:`source_run_id`), as ``medseg.source_run`` and as MLflow's
    ``mlflow.parentRunId``, so a run tagged with them sits nested under it; empty when there is no such run."""
    run_id = source_run_id(checkpoints, tracking_uri)
    return {} if run_id is None else {"medseg.source_run": run_id, "mlflow.parentRunId": run_id}


def training_record(checkpoints: Sequence[str | os.PathLike], tracking_uri: str) -> dict | None:
    """What a bundle's metadata records of the training behind ``checkpoints`` (``medseg.training``), from the
    MLflow run they came from (:func:`source_run_id`): the day it started, its machine and command (its
    ``medseg.machine`` and ``medseg.command`` tags), its wall time in minutes and the training steps of each
    network (an ensemble's members are its child runs, in member order). ``None`` when there is no such run."""
    source = source_run_id(checkpoints, tracking_uri)
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


def _training_folder(checkpoints: Sequence[str | os.PathLike]) -> Path | None:
    """The output folder of the training that wrote ``checkpoints``: one run's folder, or an ensemble's (its
    members' folders ``member<k>`` side by side); ``None`` for checkpoints of more than one training."""
    folders = {Path(checkpoint).resolve().parent.parent for checkpoint in checkpoints}
    if len(folders) > 1:
        parents = {folder.parent for folder in folders}
        if len(parents) > 1 or not all(folder.name.startswith("member") for folder in folders):
            return None
        folders = parents
    return folders.pop()
