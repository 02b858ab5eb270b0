"""Where runs are tracked: the default store, the fail-fast server check, and the fluent API pointed at a store.

By default runs go to an embedded SQLite store, ``<cwd>/mlflow.db`` (artifacts in ``<cwd>/mlruns``, MONAI's
``MLFlowHandler`` default layout). Any MLflow tracking URI works instead, including a real
``mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`` reached as
``http://127.0.0.1:5000``.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from monai.utils import path_to_sqlite_uri

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "TrackingServerError",
    "check_tracking_server",
    "default_tracking_uri",
    "prepare_tracking_store",
    "sqlite_path",
    "tag_experiment_kind",
    "tracking_at",
]


class TrackingServerError(RuntimeError):
    """The MLflow tracking server cannot be reached."""


def default_tracking_uri() -> str:
    """``sqlite:///<cwd>/mlflow.db``: an embedded store needing no server."""
    return path_to_sqlite_uri(os.path.join(os.getcwd(), "mlflow.db"))


def prepare_tracking_store(uri: str) -> None:
    """Create the tracking store behind ``uri`` unless it exists (for a new SQLite file: its schema), so that runs
    started at the same time only add to it; each creating it would race."""
    MlflowClient(uri).search_experiments(max_results=1)


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


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None




@contextmanager
def tracking_at(uri: str) -> Iterator[None]:
    """MLflow's fluent API (and the ``MLFLOW_TRACKING_URI`` it sets for subprocesses) at ``uri`` for the block,
    as it was afterwards: other clients of this process (MONAI's handlers read that variable) are not redirected."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets it
