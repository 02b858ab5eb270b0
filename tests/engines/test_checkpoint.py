"""Checkpoints: written atomically (a failed save keeps the last good file), resumed with MONAI's loader."""

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointLoader, CheckpointSaver, LrScheduleHandler

from medseg.engines import AtomicCheckpointSaver


class Poisonable(torch.nn.Module):
    """A module whose state can be made unpicklable, so that ``torch.save`` fails half-way."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4))
        self.poisoned = False

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        if self.poisoned:
            state["unpicklable"] = lambda: None
        return state


def save_twice(saver_class, tmp_path, **saver_kwargs) -> Poisonable:
    """Save at epoch 1, then fail the save at epoch 2 (the second run continues the first)."""
    module = Poisonable()
    saver_class(save_dir=str(tmp_path), save_dict={"model": module}, **saver_kwargs).attach(
        engine := Engine(lambda engine, batch: None)
    )
    engine.run([0], max_epochs=1)
    module.weight.data.fill_(1.0)
    module.poisoned = True
    with pytest.raises(Exception, match="pickle"):
        engine.run([0], max_epochs=2)
    return module


def test_failed_save_keeps_the_last_complete_checkpoint(tmp_path):
    save_twice(AtomicCheckpointSaver, tmp_path, save_final=True, final_filename="latest.pt")
    assert [path.name for path in tmp_path.iterdir()] == ["latest.pt"]
    assert torch.equal(torch.load(tmp_path / "latest.pt", weights_only=True)["weight"], torch.zeros(4))


def test_monai_saver_leaves_a_broken_file_on_a_failed_save(tmp_path):
    """Why AtomicCheckpointSaver exists."""
    save_twice(CheckpointSaver, tmp_path, save_final=True, final_filename="latest.pt")
    with pytest.raises(Exception):
        torch.load(tmp_path / "latest.pt", weights_only=True)


def test_failed_interval_save_keeps_the_previous_file(tmp_path):
    save_twice(AtomicCheckpointSaver, tmp_path, save_interval=1, n_saved=1, epoch_level=True)
    (checkpoint,) = tmp_path.iterdir()
    assert torch.equal(torch.load(checkpoint, weights_only=True)["weight"], torch.zeros(4))


def tiny_trainer(max_epochs: int, handlers: list) -> tuple[SupervisedTrainer, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    data = [{"image": torch.rand(1, 8, 8), "label": (torch.rand(1, 8, 8) > 0.5).float()} for _ in range(4)]
    network = torch.nn.Conv2d(1, 1, 3, padding=1)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(data, batch_size=2),
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.BCEWithLogitsLoss(),
    )
    state = {"model": network, "optimizer": optimizer, "lr_scheduler": scheduler, "trainer": trainer}
    for handler in [LrScheduleHandler(scheduler, print_lr=False), *(make(state) for make in handlers)]:
        handler.attach(trainer)
    return trainer, network, optimizer


def test_resume_restores_network_optimizer_scheduler_and_trainer(tmp_path):
    first, network, optimizer = tiny_trainer(
        2, [lambda state: AtomicCheckpointSaver(str(tmp_path), state, save_final=True, final_filename="latest.pt")]
    )
    first.run()

    restored = {}

    def loader(state):
        restored.update(state)
        return CheckpointLoader(str(tmp_path / "latest.pt"), load_dict=state)

    resumed, resumed_network, resumed_optimizer = tiny_trainer(3, [loader])
    seen = {}

    @resumed.on(Events.STARTED)
    def snapshot(engine):  # runs after the loader, which attached first
        seen.update(epoch=engine.state.epoch, iteration=engine.state.iteration)
        seen["lr"] = resumed_optimizer.param_groups[0]["lr"]
        seen["weights_equal"] = all(
            torch.equal(a, b) for a, b in zip(network.state_dict().values(), resumed_network.state_dict().values())
        )
        seen["adam_step"] = next(iter(resumed_optimizer.state.values()))["step"].item()
        seen["scheduler_epoch"] = restored["lr_scheduler"].last_epoch

    resumed.run()
    assert seen == {
        "epoch": 2,
        "iteration": 4,
        "lr": optimizer.param_groups[0]["lr"],
        "weights_equal": True,
        "adam_step": 4,
        "scheduler_epoch": 2,
    }
    assert resumed.state.epoch == 3 and resumed.state.iteration == 6
