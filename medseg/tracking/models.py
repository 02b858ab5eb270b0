"""medseg networks as MLflow models: ``mlflow.pyfunc`` models whose ``predict`` is medseg's whole inference path.

A model is a bundle folder (configs, docs, LICENSE and the weights as ``models/model.pt``) stored as the
artifact ``bundle`` of an MLflow model; :class:`BundleModel` loads it with :func:`medseg.inference.load_model`
and predicts an image as ``medseg infer`` does (the bundle's normalisation, sliding window, TTA, runtime, precision, and
for fundus bundles the scale and the FOV). So the model can be compared as a model version, loaded with
``mlflow.pyfunc.load_model`` and served with ``mlflow models serve`` (``--env-manager local``: the serving
environment is the one medseg is installed in).

Input: one image (H, W, C) or (H, W), uint8 as read from a file. Output: (H, W) float32 probabilities for a
one-channel network, (K, H, W) otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from medseg import __version__
from medseg.tracking.store import tag_experiment_kind, tracking_at
from medseg.utils import dropped_log_records

__all__ = ["MODEL_ARTIFACT", "BundleModel", "log_bundle_model", "register_bundle_model", "sha256_of", "ship_run"]

# MLflow's switch for its per-file download progress bars
_PROGRESS_BAR = mlflow.environment_variables.MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name

# the artifact path of the model in its run
MODEL_ARTIFACT = "model"
_BUNDLE_PARTS = ("configs", "docs")


class BundleModel(mlflow.pyfunc.PythonModel):
    """``mlflow.pyfunc`` model of a medseg bundle: ``predict(image)`` returns its probabilities."""

    def load_context(self, context: Any) -> None:
        from medseg.inference import load_model, prepare_network

        loaded = load_model(context.artifacts["bundle"])
        self.settings = loaded.settings
        # the bundle's runtime and precision, as medseg infer prepares them (runtime auto: OpenVINO where installed)
        self.network = prepare_network(loaded)

    # an ndarray hint is one MLflow infers no schema from (the logged signature is the schema), so it neither
    # validates against the hint nor warns that hints are missing
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Probabilities of one image: (H, W) for a one-channel network, else (K, H, W), float32."""
        from medseg.inference import ImageMeta, fov_for, predict_image

        image = np.asarray(model_input)
        if image.ndim not in (2, 3):
            raise ValueError(f"expected one (H, W) or (H, W, C) image, got shape {image.shape}")
        image = image[None] if image.ndim == 2 else np.ascontiguousarray(image.transpose(2, 0, 1))
        meta = ImageMeta(Path("input"))
        fov = fov_for(meta.path, image, self.settings.fov, self.settings.fundus)
        probabilities = predict_image(self.network, image, meta, self.settings, fov).probabilities
        return probabilities[0].numpy() if probabilities.shape[0] == 1 else probabilities.numpy()


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _signature(channels: int) -> ModelSignature:
    image_shape = (-1, -1, channels) if channels > 1 else (-1, -1)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), image_shape)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
    )


def log_bundle_model(
    bundle: str | Path,
    weights: str | Path | Mapping[str, torch.Tensor],
    run_id: str,
    tracking_uri: str,
    *,
    train_config: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> str:
    """Log ``bundle`` with ``weights`` (a checkpoint file or a state dict) as the MLflow model ``model`` of the
    run ``run_id``, with a signature and a small input example; return the model's URI.

    The weights must fit the network the bundle's configs build: a run trained or evaluated with ``--set``
    overrides gives its executed config (``train_config``, MONAI's ``save_execute_config`` file, which replaces
    ``configs/train.yaml``, whose ids the other configs share) or the ``overrides`` themselves (applied to it).
    """
    from monai.bundle import ConfigParser

    from medseg.data.synthetic import synthetic_retina
    from medseg.inference import load_model

    bundle = Path(bundle)
    with tempfile.TemporaryDirectory(prefix="medseg-model-") as work:
        copy = Path(work) / "bundle"
        for part in _BUNDLE_PARTS:
            if (bundle / part).is_dir():
                shutil.copytree(bundle / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
        for top in bundle.iterdir():
            if top.is_file():
                shutil.copy2(top, copy / top.name)
        if train_config is not None:
            shutil.copy2(train_config, copy / "configs" / "train.yaml")
        if overrides:
            parser = ConfigParser()
            parser.read_config(str(copy / "configs" / "train.yaml"))
            parser.update(dict(overrides))
            ConfigParser.export_config_file(parser.get(), str(copy / "configs" / "train.yaml"), fmt="yaml")
        (copy / "models").mkdir()
        if isinstance(weights, Mapping):
            torch.save(dict(weights), copy / "models" / "model.pt")
        else:
            shutil.copy2(weights, copy / "models" / "model.pt")
        channels = load_model(copy).settings.in_channels or 3
        # a small fundus photograph, dark around the retina as the bundles expect (MLflow runs the model on it)
        photograph = synthetic_retina(seed=0, height=64, width=64)[0]
        example = photograph if channels > 1 else photograph[..., 1]  # grey: the green channel, vessels' contrast
        client = mlflow.MlflowClient(tracking_uri)
        status = client.get_run(run_id).info.status
        # MLflow warns that a python_model object is pickled; BundleModel holds no state, the bundle is an artifact
        pickling = dropped_log_records("mlflow.pyfunc", "Passing a Python object as `python_model`")
        # MLflow checks the model on the example, saying so, and the example's fundus scale line would read as the
        # user's photograph's
        checking = dropped_log_records("mlflow.pyfunc", "Validating input example")
        example_scale = dropped_log_records("medseg.fundus.steps", "input: ")
        with tracking_at(tracking_uri), mlflow.start_run(run_id=run_id), pickling, checking, example_scale, \
                _no_download_progress_bars():
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=BundleModel(),
                artifacts={"bundle": str(copy)},
                signature=_signature(channels),
                input_example=example,
                pip_requirements=[f"medseg=={__version__}"],
            )
        if status == "RUNNING":  # leaving the fluent run ended it; the caller's run goes on
            client.update_run(run_id, status="RUNNING")
    return info.model_uri


@contextmanager
def _no_download_progress_bars() -> Iterator[None]:
    """Logging a model with an input example loads it back, downloading its artifacts with a progress bar: noise
    on a training's or a ship's console, which names the logged model in one line."""
    previous = os.environ.get(_PROGRESS_BAR)
    os.environ[_PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[_PROGRESS_BAR]
        else:
            os.environ[_PROGRESS_BAR] = previous


def register_bundle_model(
    model_uri: str, name: str, tracking_uri: str, tags: Mapping[str, Any]
) -> mlflow.entities.model_registry.ModelVersion:
    """Register ``model_uri`` in the Model Registry as a new version of ``name``, with ``tags`` on the version."""
    with tracking_at(tracking_uri):
        version = mlflow.register_model(model_uri, name)
    client = mlflow.MlflowClient(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, str(value))
    return client.get_model_version(name, version.version)


def ship_run(
    bundle: str | Path,
    eval_metrics: Mapping[str, float],
    report: str | Path,
    tracking_uri: str,
    overrides: Mapping[str, Any] | None = None,
    source_tags: Mapping[str, str] | None = None,
) -> mlflow.entities.model_registry.ModelVersion:
    """What ``medseg bundle ship`` records in MLflow: a run in the experiment named after the bundle with the test
    metrics and the evaluation report, the shipped bundle as its model, registered as a new version of the
    bundle's name with the metrics, the weights' sha256 and the bundle version as version tags. ``source_tags``
    (:func:`medseg.tracking.source_run_tags` of the checkpoints shipped) nest the run under the training run."""
    bundle = Path(bundle)
    weights = bundle / "models" / "model.pt"
    version = json.loads((bundle / "configs" / "metadata.json").read_text()).get("version", "")
    digest = sha256_of(weights)
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(bundle.name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(bundle.name)
    tag_experiment_kind(client, experiment_id)
    run = client.create_run(experiment_id, run_name=f"ship {bundle.name} {version}",
                            tags={**dict(source_tags or {}), "medseg.bundle": bundle.name,
                                  "medseg.bundle_version": version, "medseg.weights_sha256": digest})
    client.log_batch(run.info.run_id, metrics=[mlflow.entities.Metric(key, float(value), 0, 0)
                                               for key, value in eval_metrics.items()])
    client.log_artifact(run.info.run_id, str(report))
    model_uri = log_bundle_model(bundle, weights, run.info.run_id, tracking_uri, overrides=overrides)
    client.set_terminated(run.info.run_id)
    tags = {**eval_metrics, "weights_sha256": digest, "bundle_version": version, "source_run": run.info.run_id}
    return register_bundle_model(model_uri, bundle.name, tracking_uri, tags)
