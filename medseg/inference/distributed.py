"""Inference across processes and machines: ``torchrun ... -m medseg infer`` shards the inputs over the ranks.

:func:`infer_files_distributed` lists the inputs once, on rank 0, and sends the list to every rank (outputs
written meanwhile into an input folder never change a later rank's list); each rank predicts its share
(:func:`~medseg.inference.infer_files` with ``shard``) and writes its own files; the ranks then exchange their
:class:`~medseg.inference.InferenceSummary` over a gloo process group (CPU collectives: only the listing and the
summaries travel), so every rank knows the outcome and rank 0 reports it once. An error on any rank, before or
during its share, travels in that exchange too: every rank then ends with :class:`RankFailed` naming it, none
waits for a rank that has given up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from medseg.inference.files import InferenceSummary, expand_inputs, infer_files
from medseg.inference.loading import LoadedModel

__all__ = ["RankFailed", "infer_files_distributed", "launched_by_torchrun", "process_group", "rank_device"]


class RankFailed(RuntimeError):
    """Raised on every rank when one or more ranks failed; the message names each (``rank R: ...``)."""


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a ``torchrun`` (or any launcher that sets ``WORLD_SIZE``) job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """``(rank, world_size)`` of this process, inside a gloo process group set up from the launcher's environment
    (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``) and torn down afterwards; ``(0, 1)`` and no
    group for a process started on its own."""
    if not launched_by_torchrun():
        yield 0, 1
        return
    dist.init_process_group("gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def rank_device(device: str) -> str:
    """``device`` for this rank: a bare ``"cuda"`` becomes the rank's own GPU (``cuda:LOCAL_RANK``)."""
    if device == "cuda" and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return device


def infer_files_distributed(
    load: Callable[[], LoadedModel], inputs: Sequence[str | Path], output_dir: str | Path, **options: Any
) -> InferenceSummary:
    """:func:`~medseg.inference.infer_files` by every rank of the process group (alone without one) on its
    share of ``inputs`` as rank 0 lists them, with the model ``load()`` returns; the union of every rank's
    summary (outputs written, failures in rank order, the slowest rank's ``seconds``) on every rank.

    ``options`` are :func:`~medseg.inference.infer_files`'s keyword arguments but ``shard``. Without a process
    group an error is raised as it is; in one, an error on any rank raises :class:`RankFailed` on every rank."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    listing, error = _on_rank_0(lambda: expand_inputs(inputs))
    if error is not None:
        raise RankFailed(f"rank 0: {error}")
    files, listing_failures = listing

    def share() -> InferenceSummary:
        summary = infer_files(load(), files, output_dir, shard=(rank, world_size), **options)
        summary.failures[:0] = listing_failures if rank == 0 else []
        return summary

    if world_size == 1:
        return share()
    summary, error = _outcome(share)
    outcomes: list[tuple[InferenceSummary | None, str | None] | None] = [None] * world_size
    dist.all_gather_object(outcomes, (summary, error))
    errors = [f"rank {r}: {error}" for r, (_, error) in enumerate(outcomes) if error is not None]
    if errors:
        raise RankFailed("; ".join(errors))
    combined = InferenceSummary(Path(output_dir))
    for part, _ in outcomes:
        combined.written.update(part.written)
        combined.failures.extend(part.failures)
        combined.seconds = max(combined.seconds, part.seconds)
    return combined


def _on_rank_0(work: Callable[[], Any]) -> tuple[Any, str | None]:
    """``(result, None)`` or ``(None, error)`` of ``work()`` run on rank 0 and sent to every rank."""
    if not dist.is_initialized():
        return work(), None
    outcome = [_outcome(work) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(outcome, src=0)
    return outcome[0]


def _outcome(work: Callable[[], Any]) -> tuple[Any, str | None]:
    """``(work(), None)``, or ``(None, the error's message)`` when it raised: every rank must reach the exchange."""
    try:
        return work(), None
    except Exception as err:  # whatever it is, the other ranks must hear of it rather than wait
        return None, str(err) or type(err).__name__
