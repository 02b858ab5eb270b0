"""``training_lock``: one trainer at a time per output folder.

Two ``medseg train`` runs writing one folder (a ``--resume`` started while the first still runs) would each
overwrite the other's checkpoints. The lock is ``fcntl.flock`` on a file in the folder: the kernel releases it
when its holder ends, however it ends (a SIGKILL included), so a stale lock never blocks a resume.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FolderInUse", "training_lock"]

LOCK_FILE = ".medseg-train.lock"


class FolderInUse(RuntimeError):
    """Another process holds the output folder's lock; the message names the folder and that process."""


@contextlib.contextmanager
def training_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s training lock (created with the folder if need be) until the block ends, then remove it;
    a folder that this made and that stayed empty is removed too.

    Raises:
        FolderInUse: naming ``folder`` and the process that holds its lock.
    """
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        lock = path.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise FolderInUse(f"{folder}: another medseg train (process {holder}) is training into this folder") from None
        if path.exists() and os.path.samestat(os.fstat(lock.fileno()), path.stat()):
            break
        lock.close()  # locked a file its previous holder removed meanwhile: lock the one in the folder now
    try:
        with lock:
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            try:
                yield
            finally:
                path.unlink()  # while still holding it: a process that opened it before fails, or tries again above
    finally:  # a training that failed before writing anything leaves no folder behind either
        if created:
            with contextlib.suppress(OSError):  # not empty: the training wrote into it
                folder.rmdir()
