"""``TrainingProgress``: a training you can watch, on the console."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events
from tqdm import tqdm

from medseg.engines.budget import ELAPSED_KEY

__all__ = ["EpochMeanLoss", "TrainingProgress"]


def _without_ignite_epoch_line(record: logging.LogRecord) -> bool:
    """A logging filter: false for ignite's ``Epoch[3] Complete. Time taken: ...`` record."""
    message = record.getMessage()
    return not (message.startswith("Epoch[") and "] Complete. Time taken" in message)


class EpochMeanLoss:
    """The mean loss of a trainer's epoch so far, for the console and the training curves (ignite's ``Average``
    metric would also reach MLflow as a metric of its own: MONAI's handler logs every engine metric).

    Args:
        output_transform: the loss from ``engine.state.output``; an output without a scalar loss is skipped.
    """

    def __init__(self, output_transform: Callable[[Any], Any]) -> None:
        self.output_transform = output_transform
        self._sum, self._count = 0.0, 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add)

    @property
    def value(self) -> float | None:
        """The mean so far, ``None`` before the epoch's first loss."""
        return self._sum / self._count if self._count else None

    def _reset(self, _: Engine) -> None:
        self._sum, self._count = 0.0, 0

    def _add(self, engine: Engine) -> None:
        try:
            loss = float(self.output_transform(engine.state.output))
        except (TypeError, ValueError, KeyError, IndexError):  # no output, or not a scalar loss
            return
        self._sum += loss
        self._count += 1


class TrainingProgress:
    """A progress bar over each epoch's iterations with the epoch's mean loss so far (:class:`EpochMeanLoss`, the
    mean the training curves draw, not the last batch's), the best validation metric so far and, for a
    time-budgeted run, the time left; a line per epoch when it ends. When stderr is not a terminal (a log file,
    an ensemble member whose output its parent prefixes) only the lines are written.

    Args:
        evaluator: the validator whose best key metric is shown (``state.best_metric``, ``key_metric_name``,
            ``best_metric_epoch``, as MONAI's evaluators keep them).
        output_transform: the loss from ``engine.state.output``.
        budget_minutes: the run's time budget (:class:`~medseg.engines.TimeBudget`), or ``None``.
    """

    def __init__(
        self,
        evaluator: Engine | None = None,
        output_transform: Callable[[Any], Any] = lambda output: output,
        budget_minutes: float | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.loss = EpochMeanLoss(output_transform)
        self.budget_seconds = None if budget_minutes is None else 60.0 * budget_minutes
        self.bar: tqdm | None = None

    def attach(self, engine: Engine) -> None:
        # this line per epoch replaces ignite's own (the logger is shared by the engines of the class)
        engine.logger.addFilter(_without_ignite_epoch_line)
        self.loss.attach(engine)
        engine.add_event_handler(Events.EPOCH_STARTED, self._open_bar)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._advance)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_line)
        engine.add_event_handler(Events.COMPLETED, self._close_bar)

    def status(self, engine: Engine) -> str:
        """``epoch 3/50  loss 0.4120  val_f1 0.7650  best val_f1 0.7712 (epoch 2)  41:05 of the budget left``, the
        validation metric of this epoch where it validated."""
        epoch = f"epoch {engine.state.epoch}" + ("" if self.budget_seconds else f"/{engine.state.max_epochs}")
        parts = [epoch]
        loss = self.loss.value
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        state = getattr(self.evaluator, "state", None)
        validated = state is not None and state.epoch == engine.state.epoch and state.key_metric_name in state.metrics
        if validated:
            parts.append(f"{state.key_metric_name} {state.metrics[state.key_metric_name]:.4f}")
        if state is not None and getattr(state, "best_metric_epoch", -1) > 0:
            parts.append(f"best {state.key_metric_name} {state.best_metric:.4f} (epoch {state.best_metric_epoch})")
        if self.budget_seconds:
            left = max(0.0, self.budget_seconds - float(getattr(engine.state, ELAPSED_KEY, 0.0) or 0.0))
            parts.append(f"{int(left // 60)}:{int(left % 60):02d} of the budget left")
        return "  ".join(parts)

    def _open_bar(self, engine: Engine) -> None:
        self._close_bar(engine)
        if sys.stderr.isatty():
            self.bar = tqdm(total=engine.state.epoch_length, desc=f"epoch {engine.state.epoch}", leave=False,
                            file=sys.stderr, unit="it", dynamic_ncols=True)

    def _advance(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self.status(engine).split("  ", 1)[-1], refresh=False)

    def _epoch_line(self, engine: Engine) -> None:
        self._close_bar(engine)
        print(self.status(engine), file=sys.stderr, flush=True)

    def _close_bar(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
