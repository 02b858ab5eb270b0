"""``RunArtifacts``: the files that summarise a run, kept up to date on disk while it trains.

After every validation epoch it rewrites ``training_curves.png`` (the mean training loss of every epoch and the
metrics of every validation against the epoch); when that validation is the best so far (MONAI's
``best_metric_epoch``) it also rewrites ``metrics.json``, ``roc_pr.png`` (vessel tasks) and ``overlay_<id>.png`` for the
first images of the validation set, so they always describe the best checkpoint. During training every
validation's overlays also go to ``overlays/epoch_<NNNN>/``, which the tracking handler logs as MLflow images
with the epoch as their step. Writing during training, not at the end, keeps the files valid after a crash
and leaves no ordering constraint with the handler that uploads them: pass ``output_dir`` in MONAI
``MLFlowHandler(artifacts=[...])``, which logs them when the engine completes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ignite import distributed as idist
from ignite.engine import Engine, Events
from monai.data import decollate_batch
from monai.handlers import from_engine

from medseg.engines.plots import plot_overlay, plot_roc_pr, plot_training_curves
from medseg.engines.progress import EpochMeanLoss
from medseg.metrics import FOVVesselMetricHandler
from medseg.utils import atomic_write_text

__all__ = ["RunArtifacts"]


def _per_image(data: Any) -> list[dict]:
    """A decollated list of per-image dicts, whether the engine decollated its batch or not."""
    return data if isinstance(data, list) else decollate_batch(data, detach=True)


class RunArtifacts:
    """Writes metrics JSON, curves and prediction overlays of the best validation to ``output_dir``.

    Attach it to the trainer with ``evaluator`` set (train.yaml: in ``train#handlers``), or to the
    evaluator alone with ``evaluator=None`` (evaluate.yaml: no training curve then). Under DDP only
    rank 0 writes.

    Args:
        output_dir: folder of the files (created).
        evaluator: the validation evaluator when attached to a trainer.
        vessel_metric: the evaluator's ``FOVVesselMetricHandler``, for ``roc_pr.png`` and the best-F1 threshold.
        num_images: how many validation images get an overlay.
        threshold: vessel probability threshold of the overlays.
        ignore_index: class drawn black in multi-class overlays (CamVid void).
        loss_transform: extracts the loss from the trainer's ``engine.state.output``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        evaluator: Engine | None = None,
        vessel_metric: FOVVesselMetricHandler | None = None,
        num_images: int = 3,
        threshold: float = 0.5,
        ignore_index: int | None = None,
        loss_transform: Callable = from_engine(["loss"], first=True),
    ) -> None:
        self.output_dir = Path(output_dir)
        self.evaluator = evaluator
        self.vessel_metric = vessel_metric
        self.num_images = num_images
        self.threshold = threshold
        self.ignore_index = ignore_index
        self.history: list[dict[str, float]] = []  # each validation's epoch and scalar metrics
        self.epoch_losses: dict[int, float] = {}  # each training epoch's mean loss
        self._examples: list[dict[str, Any]] = []
        self._loss = EpochMeanLoss(loss_transform)
        self._trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        if idist.get_rank() > 0:  # under DDP one process writes the files
            return
        evaluator = engine if self.evaluator is None else self.evaluator
        if self.evaluator is not None:
            self._trainer = engine
            self._loss.attach(engine)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._keep_epoch_loss)
        evaluator.add_event_handler(Events.EPOCH_STARTED, self._reset_examples)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._keep_examples)
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _keep_epoch_loss(self, trainer: Engine) -> None:
        """The epoch's mean loss (also kept by a validation that runs before this handler at the epoch's end)."""
        if self._loss.value is not None:
            self.epoch_losses[trainer.state.epoch] = self._loss.value

    def _reset_examples(self, _: Engine) -> None:
        self._examples = []

    def _keep_examples(self, evaluator: Engine) -> None:
        missing = self.num_images - len(self._examples)
        if missing <= 0:
            return
        batch, output = _per_image(evaluator.state.batch), _per_image(evaluator.state.output)
        for item, result in list(zip(batch, output))[:missing]:
            self._examples.append(
                {
                    "id": str(item.get("id", len(self._examples))),
                    **{key: torch.as_tensor(result[key]).detach().cpu() for key in ("image", "label", "pred")},
                    "mask": torch.as_tensor(item["mask"]).detach().cpu() if "mask" in item else None,
                }
            )

    def _write(self, evaluator: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        epoch = evaluator.state.epoch
        scalars = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))}
        self.history.append({"epoch": epoch, **scalars})
        if self._trainer is not None:
            self._keep_epoch_loss(self._trainer)
            plot_training_curves(self.epoch_losses, self.history, self.output_dir / "training_curves.png")
            self._write_overlays(self.output_dir / "overlays" / f"epoch_{epoch:04d}", epoch)
        if getattr(evaluator.state, "best_metric_epoch", epoch) == epoch:
            self._write_best(evaluator, epoch, scalars)

    def _write_best(self, evaluator: Engine, epoch: int, scalars: dict[str, float]) -> None:
        summary: dict[str, Any] = {
            "epoch": epoch,
            "key_metric": getattr(evaluator.state, "key_metric_name", None),
            "metrics": scalars,
        }
        if self.vessel_metric is not None:
            metric = self.vessel_metric.metric
            best_threshold = metric.best_f1_threshold()
            summary["best_f1_threshold"] = best_threshold
            summary["metrics_at_best_f1_threshold"] = metric.compute(best_threshold)
            plot_roc_pr(metric.roc_curve(), metric.pr_curve(), self.output_dir / "roc_pr.png", title=f"epoch {epoch}")
        atomic_write_text(self.output_dir / "metrics.json", json.dumps(summary, indent=2))
        self._write_overlays(self.output_dir, epoch)

    def _write_overlays(self, folder: Path, epoch: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for example in self._examples:
            plot_overlay(
                example["image"],
                example["label"],
                example["pred"],
                folder / f"overlay_{example['id']}.png",
                title=f"{example['id']} (epoch {epoch})",
                threshold=self.threshold,
                ignore_index=self.ignore_index,
                mask=example["mask"],
            )
