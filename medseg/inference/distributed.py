"""Inference across processes and machines: ``torchrun ... -m medseg infer`` shards the inputs over the ranks.

Each rank predicts its share of the inputs (:func:`~medseg.inference.infer_files` with ``shard``) and writes its
own files; the ranks then exchange their :class:`~medseg.inference.InferenceSummary` over a gloo process group
(CPU collectives: only the summaries travel), so every rank knows the outcome and rank 0 reports it once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from medseg.inference.files import InferenceSummary

__all__ = ["combined_summary", "launched_by_torchrun", "process_group", "rank_device"]


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


def combined_summary(summary: InferenceSummary) -> InferenceSummary:
    """The union of every rank's summary (outputs written, failures in rank order) on every rank; its
    ``seconds`` are the slowest rank's."""
    if not dist.is_initialized():
        return summary
    summaries: list[InferenceSummary | None] = [None] * dist.get_world_size()
    dist.all_gather_object(summaries, summary)
    combined = InferenceSummary(summary.output_dir)
    for part in summaries:
        assert part is not None
        combined.written.update(part.written)
        combined.failures.extend(part.failures)
        combined.seconds = max(combined.seconds, part.seconds)
    return combined
