"""``TrainingProgress``: a training you can watch, on the console."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events
from tqdm import tqdm

from medseg.engines.budget import ELAPSED_KEY

__all__ = ["TrainingProgress"]


def _without_ignite_epoch_line(record: logging.LogRecord) -> bool:
    """A logging filter: false for ignite's ``Epoch[3] Complete. Time taken: ...`` record."""
    message = record.getMessage()
    return not (message.startswith("Epoch[") and "] Complete. Time taken" in message)


class TrainingProgress:
    """A progress bar over each epoch's iterations with the epoch's mean loss so far (the mean the training curves
    draw, not the last batch's), the best validation metric so far and, for a time-budgeted run, the time left; a line per epoch when it ends. When stderr is not a terminal (a log file,
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
        self.output_transform = output_transform
        self.budget_seconds = None if budget_minutes is None else 60.0 * budget_minutes
        self.bar: tqdm | None = None
        self._loss_sum, self._loss_count = 0.0, 0

    def attach(self, engine: Engine) -> None:
        # this line per epoch replaces ignite's own (the logger is shared by the engines of the class)
        engine.logger.addFilter(_without_ignite_epoch_line)
        engine.add_event_handler(Events.EPOCH_STARTED, self._open_bar)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add_loss)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._advance)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_line)
        engine.add_event_handler(Events.COMPLETED, self._close_bar)

    def status(self, engine: Engine) -> str:
        """``epoch 3/50  loss 0.4120  val_f1 0.7650  best val_f1 0.7712 (epoch 2)  41:05 of the budget left``, the
        validation metric of this epoch where it validated."""
        epoch = f"epoch {engine.state.epoch}" + ("" if self.budget_seconds else f"/{engine.state.max_epochs}")
        parts = [epoch]
        loss = self._loss_sum / self._loss_count if self._loss_count else None
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

    def _add_loss(self, engine: Engine) -> None:
        try:
            loss = float(self.output_transform(engine.state.output))
        except (TypeError, ValueError, KeyError, IndexError):  # no output, or not a scalar loss
            return
        self._loss_sum += loss
        self._loss_count += 1

    def _open_bar(self, engine: Engine) -> None:
        self._close_bar(engine)
        self._loss_sum, self._loss_count = 0.0, 0
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
