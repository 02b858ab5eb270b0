"""Fixtures for the network tests: single-threaded torch and a training step that checks every gradient."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn as nn


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    # The test networks are tiny; on the shared 2-core machine one thread is several times faster than two
    # threads competing with other processes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _as_list(output: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return list(output) if isinstance(output, (list, tuple)) else [output]


@pytest.fixture
def train_step() -> Callable[[nn.Module, torch.Tensor], list[torch.Tensor]]:
    """Forward ``x`` in training mode, back-propagate a loss over all outputs and assert that every trainable
    parameter received a finite gradient. Returns the outputs as a list."""

    def step(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        net.train()
        net.zero_grad(set_to_none=True)
        outputs = _as_list(net(x))
        sum(out.square().mean() for out in outputs).backward()
        missing = [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"parameters without gradient: {missing}"
        broken = [name for name, p in net.named_parameters() if p.requires_grad and not p.grad.isfinite().all()]
        assert not broken, f"parameters with non-finite gradient: {broken}"
        return outputs

    return step
