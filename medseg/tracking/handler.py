"""``TrackingHandler``: MONAI's ``MLFlowHandler`` plus run tags, rank-0 attachment and survival of a lost server.

What MONAI's ``MLFlowHandler`` already logs, and this keeps as is: params ``max_epochs``, ``epoch_length``
and ``experiment_param`` at ``STARTED``; the loss (``tag_name``) and optimizer ``lr`` per iteration; every
``engine.state.metrics`` value (and ``state_attributes``, e.g. ``best_metric``) per epoch; the ``artifacts``
files at ``COMPLETED``; and it closes the run when ``close_on_complete``. A trainer and its validator
handler share one run: with ``run_name=None`` the second one joins the newest unfinished run.

What it lacks, added here:

- ``tags`` set on the run when it starts (see ``medseg.tracking.run_tags``);
- the run found by its id, which ``run_folder`` records (MONAI finds it by its name, and names are not unique):
  a trainer's and its validator's handlers, and a resumed training's, log to the run the folder recorded;
- the trainer's handler (the one logging iterations) logs ``segment_start`` each time a training process starts,
  fresh or resumed, so that a record of the run leaves out the time between a kill and its resume;
- attaching only on rank 0 under DDP (MONAI's bundle settings do this with ``_disabled_``);
- two trainings that start at once (an ensemble's members) may both find no experiment and both create it; the
  loser's ``RESOURCE_ALREADY_EXISTS`` is retried by MONAI only when the error message names that code, which the
  SQL store's message does not, so here the loser looks the experiment up again;
- an MLflow failure (server gone, disk full) would raise inside the ignite event and stop training; here it
  is reported once as a ``RuntimeWarning`` and tracking stops for this handler while training goes on. The
  first failed request is retried by the MLflow client (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7 with
  exponential backoff, ``MLFLOW_HTTP_REQUEST_TIMEOUT``) before it gives up; set those environment variables
  to bound that pause.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import mlflow.data
import numpy as np
import pandas
import torch
from ignite import distributed as idist
from ignite.engine import Engine
from mlflow.entities import DatasetInput, InputTag, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from monai.handlers import MLFlowHandler
from PIL import Image

from medseg.tracking.record import SEGMENT_START_METRIC, record_run_id, recorded_run_id
from medseg.tracking.store import tag_experiment_kind

__all__ = ["TrackingHandler"]

# MLflow's words for the contexts MONAI's bundles log their datasets under
_DATASET_CONTEXTS = {"train": "training"}


class TrackingHandler(MLFlowHandler):
    """``monai.handlers.MLFlowHandler`` (same arguments) that sets ``tags``, attaches on rank 0 only and never
    stops the engine when tracking fails.

    Args:
        tags: MLflow run tags, e.g. ``{"network": "unet", "dataset": "drive", "git_commit": ...}``.
        model_bundle: with ``model_network``, when the engine completes the run gets an MLflow model
            (:func:`medseg.tracking.models.log_bundle_model`): this bundle folder with the network's weights.
        model_network: the network whose weights the model holds (a training's ``eval_network``).
        system_metrics: log the machine's CPU, memory and disk use to the run while it lasts.
        run_folder: a training's output folder: its handlers log to the run whose id it records
            (:func:`medseg.tracking.recorded_run_id`), the first to start records the run it starts.
        epoch_images: a folder whose ``epoch_<NNNN>/*.png`` (``medseg.engines.RunArtifacts``'s overlays of each
            validation) are logged after that epoch as MLflow images, key the file's name, step the epoch.
        model_config: the run's executed train config (MONAI's ``save_execute_config`` file), so that the
            model's network is the one trained whatever ``--set`` overrides built it.
        training_folder: a user's labelled folder the run trains on (:func:`medseg.engines.folder_summary`:
            name, source, digest, counts), logged as the run's MLflow dataset input of context "training".
        args, kwargs: ``MLFlowHandler`` arguments.
    """

    def __init__(
        self,
        *args: Any,
        tags: Mapping[str, Any] | None = None,
        model_bundle: str | None = None,
        model_network: torch.nn.Module | None = None,
        model_config: str | None = None,
        system_metrics: bool = False,
        epoch_images: str | None = None,
        run_folder: str | None = None,
        training_folder: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tags = {key: str(value) for key, value in (tags or {}).items()}
        self.model_bundle = model_bundle
        self.model_network = model_network
        self.model_config = model_config if isinstance(model_config, str) else None
        self.system_metrics = system_metrics
        self.epoch_images = epoch_images if isinstance(epoch_images, str) else None
        self.run_folder = run_folder if isinstance(run_folder, str) else None
        self.training_folder = dict(training_folder) if isinstance(training_folder, Mapping) else None
        self.monitor: SystemMetricsMonitor | None = None
        self.tracking_lost = False
        if self.dataset_logger is None:
            self.dataset_logger = self._record_datasets

    def _record_datasets(self, datasets: Mapping[str, Any] | None) -> None:
        """MONAI's record of each dataset (its samples' ``dataset_keys`` as an MLflow input of that context),
        without the progress bar MONAI draws over it: it takes microseconds and would interleave the console."""
        for context, dataset in (datasets or {}).items():
            samples = getattr(dataset, "data", [])
            self._log_dataset({key: [str(sample[key]) for sample in samples] for key in self.dataset_keys}, context)

    def _log_dataset(self, sample_dict: dict[str, Any], context: str = "train") -> None:
        """MONAI's record of a dataset (an input named ``<context>_dataset_<n>``, unless one of that digest is
        logged already; params ``<name>_digest`` and ``<name>_samples``) with the ``mlflow.data.context`` tag
        MONAI leaves out, which MLflow's UI shows beside the dataset."""
        self.cur_run = self.client.get_run(self.cur_run.info.run_id)  # inputs logged since it was read
        logged = self.cur_run.inputs.dataset_inputs
        name = f"{context}_dataset_{sum(entry.dataset.name.startswith(context) for entry in logged)}"
        dataset = mlflow.data.from_pandas(pandas.DataFrame(sample_dict), name=name)
        if any(entry.dataset.digest == dataset.digest for entry in logged):
            return
        tag = InputTag("mlflow.data.context", _DATASET_CONTEXTS.get(context, context))
        self.client.log_inputs(self.cur_run.info.run_id, [DatasetInput(dataset._to_mlflow_entity(), [tag])])
        self._log_params(MLFlowHandler._get_pandas_dataset_info(dataset))

    def attach(self, engine: Engine) -> None:
        if idist.get_rank() == 0:
            super().attach(engine)

    def _tracked(self, action: Callable[[], None], what: str) -> None:
        """Run an MLflow action unless tracking was lost; on failure warn once and stop tracking."""
        if self.tracking_lost:
            return
        try:
            action()
        except (MlflowException, OSError) as err:  # requests' errors are OSErrors
            self.tracking_lost = True
            message = (
                f"MLflow tracking lost while logging the {what} to {self.client.tracking_uri}: {err}. "
                "Training goes on without tracking."
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _set_experiment(self) -> None:
        try:
            super()._set_experiment()
        except MlflowException as err:
            if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            super()._set_experiment()  # created meanwhile by another training: found this time
        tag_experiment_kind(self.client, self.experiment.experiment_id)

    def _start_and_tag(self, engine: Engine) -> None:
        recorded = recorded_run_id(self.run_folder) if self.run_folder and self.cur_run is None else None
        if recorded is not None:
            self.cur_run = self.client.get_run(recorded)  # MONAI's start then logs to it
            if self.cur_run.info.status != "RUNNING":  # a killed training's run, resumed
                self.client.update_run(recorded, status="RUNNING")
        super().start(engine)
        if self.run_folder and recorded is None and self.cur_run is not None:
            record_run_id(self.run_folder, self.cur_run.info.run_id)
        if self.iteration_log and self.cur_run is not None:  # the trainer's handler: mark this process's start
            self.client.log_metric(self.cur_run.info.run_id, SEGMENT_START_METRIC, engine.state.iteration,
                                   step=engine.state.iteration)
        if self.tags and self.cur_run is not None:
            tags = [RunTag(key, value) for key, value in self.tags.items()]
            self.client.log_batch(run_id=self.cur_run.info.run_id, metrics=[], params=[], tags=tags)
        if self.training_folder is not None and self.cur_run is not None:
            self._log_training_folder()
        if self.system_metrics and self.cur_run is not None and self.monitor is None:
            # CPU, memory, disk and network use beside the run's metrics (MLflow's own sampler, psutil); its
            # start and stop lines are not for the console
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
            self.monitor = SystemMetricsMonitor(self.cur_run.info.run_id, sampling_interval=10,
                                                tracking_uri=self.client.tracking_uri)
            self.monitor.start()

    def _log_training_folder(self) -> None:
        """The folder as an MLflow dataset (``mlflow.data.from_numpy``: its name, digest and source; the
        profile counts the pairs), one row per pair, 1 for a validation pair and 0 for a training one; its
        summary (counts, the held-out ids) as params ``training_folder.<key>``."""
        folder = self.training_folder
        self._log_params({f"training_folder.{key}": value for key, value in folder.items()})
        held_out = np.array([0] * int(folder["train"]) + [1] * int(folder["validation"]))
        with warnings.catch_warnings():
            # a folder path matches both of MLflow's local sources ("" and "file" schemes), one class: same source
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            dataset = mlflow.data.from_numpy(held_out, source=folder["source"], name=folder["name"],
                                             digest=folder["digest"])
        self.client.log_inputs(self.cur_run.info.run_id, [DatasetInput(dataset._to_mlflow_entity(),
                                                                        [InputTag("mlflow.data.context", "training")])])

    def start(self, engine: Engine) -> None:
        self._tracked(partial(self._start_and_tag, engine), "run start")

    def iteration_completed(self, engine: Engine) -> None:
        self._tracked(partial(super().iteration_completed, engine), f"iteration {engine.state.iteration}")

    def epoch_completed(self, engine: Engine) -> None:
        self._tracked(partial(super().epoch_completed, engine), f"epoch {engine.state.epoch} metrics")
        if self.epoch_images is not None and self.cur_run is not None:
            self._tracked(partial(self._log_epoch_images, engine.state.epoch), f"epoch {engine.state.epoch} images")

    def _log_epoch_images(self, epoch: int) -> None:
        for path in sorted((Path(self.epoch_images) / f"epoch_{epoch:04d}").glob("*.png")):
            with Image.open(path) as image:
                self.client.log_image(self.cur_run.info.run_id, image.convert("RGB"), key=path.stem, step=epoch,
                                      synchronous=True)

    def complete(self) -> None:
        self._tracked(super().complete, "artifacts")
        if self.model_bundle is not None and self.model_network is not None and self.cur_run is not None:
            try:
                self._log_model()
            except Exception as err:  # the run and its metrics stand without the model: warn, then close it
                message = f"the MLflow model of run {self.cur_run.info.run_id} could not be logged: {err}"
                warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _log_model(self) -> None:
        from medseg.tracking.models import log_bundle_model

        network = self.model_network
        if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            network = network.module
        weights = {name: value.detach().cpu() for name, value in network.state_dict().items()}
        config = self.model_config if self.model_config and os.path.isfile(self.model_config) else None
        log_bundle_model(self.model_bundle, weights, self.cur_run.info.run_id, self.client.tracking_uri,
                         train_config=config)

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None
        self._tracked(super().close, "run end")
