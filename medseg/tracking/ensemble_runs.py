"""The MLflow run of an ensemble: the parent of its members' runs, holding the ensemble's own validation metrics."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from medseg.tracking.record import record_run_id, recorded_run_id, training_run_name
from medseg.tracking.store import tag_experiment_kind

__all__ = ["ensemble_parent_run", "log_ensemble_metrics"]


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
    ensemble reuses the run it started, by the id recorded in ``output_dir`` (:func:`recorded_run_id`)."""
    client = MlflowClient(tracking_uri)
    recorded = recorded_run_id(output_dir) if resume else None
    if recorded is not None:
        try:
            client.update_run(recorded, status="RUNNING")
            return recorded
        except MlflowException:  # recorded in another store, or deleted: a new run
            pass
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    tag_experiment_kind(client, experiment_id)
    note = ("An ensemble: its members are the child runs; its metrics are the ensemble's own, evaluated on the "
            "validation images.")
    run = client.create_run(experiment_id, run_name=training_run_name(output_dir, resume),
                            tags={**tags, "mlflow.note.content": note})
    client.log_batch(run.info.run_id, params=[Param(key, str(value)) for key, value in params.items()])
    record_run_id(output_dir, run.info.run_id)
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
