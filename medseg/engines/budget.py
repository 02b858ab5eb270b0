"""``TimeBudget``: train for a wall-clock budget instead of a number of epochs."""

from __future__ import annotations

import math
import time

from ignite.engine import Engine, Events
from torch.optim import Optimizer

__all__ = ["TimeBudget"]


class TimeBudget:
    """Cosine learning-rate decay over a wall-clock budget, then stop the trainer.

    A CPU preset promises a training time, not an epoch count: the same recipe then takes what the machine
    gives, and a slower or busier machine trains fewer steps instead of running over. The learning rate of
    every parameter group follows ``eta_min + (lr0 - eta_min) * (1 + cos(pi * elapsed / budget)) / 2``, where
    ``lr0`` is the group's learning rate when training starts; when the budget is spent the trainer terminates
    (its ``COMPLETED`` handlers still run). Time spent in validation counts.

    Args:
        minutes: the budget.
        optimizer: whose learning rates decay.
        eta_min: learning rate at the end of the budget.
    """

    def __init__(self, minutes: float, optimizer: Optimizer, eta_min: float = 0.0) -> None:
        if minutes <= 0:
            raise ValueError(f"the time budget must be positive, got {minutes} minutes")
        self.seconds = 60.0 * minutes
        self.optimizer = optimizer
        self.eta_min = eta_min
        self.start: float | None = None
        self.base_lrs: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_STARTED, self._set_lr)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop_when_spent)

    def elapsed_fraction(self) -> float:
        return 0.0 if self.start is None else min(1.0, (time.monotonic() - self.start) / self.seconds)

    def _start(self, engine: Engine) -> None:
        self.start = time.monotonic()
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]

    def _set_lr(self, engine: Engine) -> None:
        decay = (1.0 + math.cos(math.pi * self.elapsed_fraction())) / 2.0
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.eta_min + (base_lr - self.eta_min) * decay

    def _stop_when_spent(self, engine: Engine) -> None:
        if self.elapsed_fraction() >= 1.0:
            engine.logger.info(f"time budget of {self.seconds / 60:g} minutes spent at iteration {engine.state.iteration}")
            engine.terminate()
