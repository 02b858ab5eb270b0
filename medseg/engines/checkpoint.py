"""Crash-safe checkpoints: MONAI's ``CheckpointSaver`` with atomic writes.

MONAI's ``CheckpointSaver`` writes through ignite's ``DiskSaver`` with ``atomic=False`` (its comment: the
temp file would not be group-readable, which ignite has fixed since by ``chmod``-ing after the
rename), so a crash or a full disk during ``torch.save`` leaves a truncated file in place of the last
good checkpoint; and ignite's ``Checkpoint`` deletes the file it replaces *before* writing the new one.
``AtomicCheckpointSaver`` keeps everything else of MONAI's saver, writes each checkpoint to a temporary
file in the same folder then ``os.replace``-s it into place, and deletes replaced files only after
that, so the folder always holds the last complete checkpoint.

Resuming needs nothing of ours: ``monai.handlers.CheckpointLoader`` loads with
``torch.load(weights_only=True)`` and restores every object of its ``load_dict`` (network, optimizer,
lr scheduler, trainer epoch/iteration) at the engine's ``STARTED`` event.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver", "latest_checkpoint"]


class _AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` writing atomically (temp file + ``os.replace``), optionally to one fixed file name.

    ignite's ``Checkpoint`` calls ``remove(old)`` right before saving the new file; the removal is deferred
    until the new file is complete, so a crash in between never leaves the folder without a checkpoint.
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename
        self._stale: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        for stale in self._stale:
            if stale != filename:  # the same name was just replaced atomically
                super().remove(stale)
        self._stale.clear()

    def remove(self, filename: str) -> None:
        self._stale.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` (same arguments) whose files are written atomically."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, filename=checkpoint.save_handler.filename)


def latest_checkpoint(folder: str | os.PathLike, prefix: str = "latest") -> str:
    """Path of the newest interval checkpoint ``<prefix>_checkpoint_<epoch|iteration>=N.pt`` in ``folder``.

    What ``--resume`` loads: the interval checkpoints of :class:`AtomicCheckpointSaver` carry the network,
    optimizer, scheduler and trainer state. Raises ``FileNotFoundError`` naming the folder when there is none.
    """
    found = []
    for path in Path(folder).glob(f"{prefix}_*=*.pt"):
        step = path.stem.rpartition("=")[2]
        if step.isdigit():
            found.append((int(step), path))
    if not found:
        raise FileNotFoundError(f"{folder}: no checkpoint {prefix}_*=N.pt to resume from")
    return str(max(found)[1])
