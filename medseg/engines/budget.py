"""``TimeBudget``: train for a wall-clock budget instead of a number of epochs, across restarts."""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from ignite.engine import Engine, Events
from torch.optim import Optimizer

__all__ = ["TimeBudget"]

logger = logging.getLogger(__name__)

# trainer state attributes that the trainer's own state dict carries (ignite's ``state_dict_user_keys``), so an
# interval checkpoint holds how much of the budget was spent and the learning rates the decay started from
ELAPSED_KEY = "budget_elapsed_seconds"
BASE_LRS_KEY = "budget_base_lrs"


# ignite's TimeLimit is not used for the stop: it starts its clock when built and keeps no time spent, so a resumed
# run would be given the whole budget again
class TimeBudget:
    """Cosine learning-rate decay over a wall-clock budget, then stop the trainer.

    A CPU preset promises a training time, not an epoch count: the same recipe then takes what the machine
    gives, and a slower or busier machine trains fewer steps instead of running over. The learning rate of
    every parameter group follows ``eta_min + (lr0 - eta_min) * (1 + cos(pi * elapsed / budget)) / 2``, where
    ``lr0`` is the group's learning rate when training first starts; when the budget is spent, after an
    iteration or after an epoch's handlers (its validation included), the trainer terminates (its ``COMPLETED``
    handlers still run). Time spent in validation counts.

    The time spent and ``lr0`` live in the trainer's state (``engine.state.budget_elapsed_seconds`` and
    ``budget_base_lrs``, both in ``engine.state_dict()``, which reads the clock when it is called), so a run
    resumed from an interval checkpoint spends only what was left at that checkpoint, with the learning rate
    where it was, whether the checkpoint loader attaches before or after this handler; a run killed between two
    checkpoints trains at most one checkpoint interval more than its budget. A checkpoint without these keys (an
    epoch-based run's, or one written before they were stored) resumes with the whole budget, and a log line
    says so.

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
        for key in (ELAPSED_KEY, BASE_LRS_KEY):
            if key not in engine.state_dict_user_keys:
                engine.state_dict_user_keys.append(key)
        # a fresh run's values; a checkpoint loaded at STARTED, by a loader attached before or after, replaces them
        setattr(engine.state, ELAPSED_KEY, 0.0)
        setattr(engine.state, BASE_LRS_KEY, [])
        engine.load_state_dict = self._loading_with_defaults(engine, engine.load_state_dict)
        engine.state_dict = self._saving_time_spent(engine, engine.state_dict)
        engine.add_event_handler(Events.STARTED, self._stop_check_after_every_epoch_handler)
        engine.add_event_handler(Events.ITERATION_STARTED, self._set_lr)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop_when_spent)

    def elapsed_fraction(self) -> float:
        return 0.0 if self.start is None else min(1.0, (time.monotonic() - self.start) / self.seconds)

    def remaining_seconds(self) -> float:
        return self.seconds * (1.0 - self.elapsed_fraction())

    def _loading_with_defaults(self, engine: Engine, load: Callable[[Mapping], None]) -> Callable[[Mapping], None]:
        """``engine.load_state_dict`` accepting a state without the budget's keys, which ignite refuses."""

        def load_state_dict(state_dict: Mapping) -> None:
            if ELAPSED_KEY not in state_dict:
                logger.info("the checkpoint holds no time spent of a budget: the budget of %g minutes starts from zero",
                            self.seconds / 60)
                state_dict = {**state_dict, ELAPSED_KEY: 0.0, BASE_LRS_KEY: []}
            load(state_dict)

        return load_state_dict

    def _saving_time_spent(self, engine: Engine, save: Callable[[], OrderedDict]) -> Callable[[], OrderedDict]:
        """``engine.state_dict`` with the time spent until now: a checkpoint saved after validation counts it."""

        def state_dict() -> OrderedDict:
            self._record(engine)
            return save()

        return state_dict

    def _stop_check_after_every_epoch_handler(self, engine: Engine) -> None:
        # attached now, when every handler is, the check runs after the epoch's validation whatever the order
        if engine.has_event_handler(self._stop_when_spent, Events.EPOCH_COMPLETED):
            engine.remove_event_handler(self._stop_when_spent, Events.EPOCH_COMPLETED)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._stop_when_spent)

    def _set_lr(self, engine: Engine) -> None:
        if self.start is None:  # the first iteration of this process: the clock continues from the state
            self.start = time.monotonic() - float(getattr(engine.state, ELAPSED_KEY))
            self.base_lrs = list(getattr(engine.state, BASE_LRS_KEY)) or [g["lr"] for g in self.optimizer.param_groups]
            setattr(engine.state, BASE_LRS_KEY, list(self.base_lrs))
        decay = (1.0 + math.cos(math.pi * self.elapsed_fraction())) / 2.0
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.eta_min + (base_lr - self.eta_min) * decay

    def _record(self, engine: Engine) -> None:
        if self.start is not None:
            setattr(engine.state, ELAPSED_KEY, time.monotonic() - self.start)

    def _stop_when_spent(self, engine: Engine) -> None:
        self._record(engine)
        if self.elapsed_fraction() >= 1.0 and not engine.should_terminate:
            logger.info("time budget of %g minutes spent at iteration %d", self.seconds / 60, engine.state.iteration)
            engine.terminate()
