"""medseg.engines.TimeBudget: the budget's clock on a real ignite trainer, resumed through MONAI's
``CheckpointLoader`` as ``medseg train --resume`` does: from a checkpoint with or without the budget's keys,
whatever order the handlers attach in, with validation counted."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from medseg.engines import TimeBudget
from medseg.engines.budget import BASE_LRS_KEY, ELAPSED_KEY

LR = 0.1


def trainer_and_optimizer(iteration_seconds: float = 0.0) -> tuple[Engine, torch.optim.Optimizer]:
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=LR)

    def step(engine: Engine, batch: int) -> float:
        time.sleep(iteration_seconds)
        optimizer.zero_grad()
        loss = (weight - batch).pow(2).sum()
        loss.backward()
        optimizer.step()
        return loss.item()

    return Engine(step), optimizer


def saved_trainer(path, state: dict) -> str:
    torch.save({"trainer": state}, path)
    return str(path)


def test_a_checkpoint_without_the_budgets_keys_resumes_with_the_budget_starting_from_zero(tmp_path, caplog):
    epoch_run, _ = trainer_and_optimizer()
    epoch_run.run([1.0, 2.0], max_epochs=2)  # an epoch-based run: its state has no budget keys
    checkpoint = saved_trainer(tmp_path / "latest_checkpoint_epoch=2.pt", epoch_run.state_dict())

    trainer, optimizer = trainer_and_optimizer()
    TimeBudget(1.0, optimizer).attach(trainer)
    CheckpointLoader(checkpoint, {"trainer": trainer}).attach(trainer)
    with caplog.at_level(logging.INFO):
        trainer.run([1.0, 2.0], max_epochs=4)
    assert trainer.state.iteration == 8
    assert 0 < getattr(trainer.state, ELAPSED_KEY) < 5  # this run's time only
    assert getattr(trainer.state, BASE_LRS_KEY) == [LR]
    assert "holds no time spent of a budget: the budget of 1 minutes starts from zero" in caplog.text


@pytest.mark.parametrize("loader_first", [True, False])
def test_the_clock_continues_from_the_checkpoint_whichever_handler_attaches_first(tmp_path, loader_first):
    checkpoint = saved_trainer(tmp_path / "latest_checkpoint_epoch=1.pt", {
        "epoch": 1, "epoch_length": 2, "max_epochs": 100, ELAPSED_KEY: 45.0, BASE_LRS_KEY: [LR]})
    trainer, optimizer = trainer_and_optimizer()
    budget = TimeBudget(1.0, optimizer)
    loader = CheckpointLoader(checkpoint, {"trainer": trainer})
    for handler in (loader, budget) if loader_first else (budget, loader):
        handler.attach(trainer)
    trainer.run([1.0, 2.0], max_epochs=2)
    assert 45.0 < getattr(trainer.state, ELAPSED_KEY) < 50.0
    assert budget.elapsed_fraction() > 0.75
    # the cosine decay three quarters through: lr0 (1 + cos(0.75 pi)) / 2 = 0.146 lr0, not a fresh start at lr0
    assert optimizer.param_groups[0]["lr"] < 0.16 * LR


def test_validation_time_counts_in_the_spent_time_a_checkpoint_saves():
    trainer, optimizer = trainer_and_optimizer()
    TimeBudget(1.0, optimizer).attach(trainer)
    validator = Engine(lambda engine, batch: time.sleep(0.2))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: validator.run([0, 1]))  # 0.4 s of validation
    saved: list[float] = []  # what an interval checkpoint, attached after validation, holds
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: saved.append(engine.state_dict()[ELAPSED_KEY]))
    trainer.run([1.0, 2.0], max_epochs=2)
    assert saved[0] >= 0.4 and saved[1] >= 0.8


def test_a_budget_spent_during_validation_stops_the_trainer_at_that_epochs_end():
    trainer, optimizer = trainer_and_optimizer()
    TimeBudget(0.5 / 60, optimizer).attach(trainer)  # half a second
    validator = Engine(lambda engine, batch: time.sleep(0.3))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: validator.run([0, 1]))
    trainer.run([1.0, 2.0], max_epochs=10)
    assert trainer.state.iteration == 2
