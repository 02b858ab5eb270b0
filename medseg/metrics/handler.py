"""ignite adapter shared by the pooled metrics (``FOVVesselMetrics``, ``SegmentationMetrics``).

A pooled metric accumulates integer ``counts`` (a histogram or a confusion matrix) over a whole epoch
and computes a dict of floats from them. The adapter feeds it from a MONAI engine, sums ``counts``
over DDP ranks, and publishes every value in ``engine.state.metrics`` (prefixed), the attached name
holding the one value MONAI's evaluator compares for the best model (``key_val_metric``).

MONAI's ``SupervisedEvaluator`` puts only ``image``, ``label`` and ``pred`` in ``engine.state.output``;
the other keys of the data dict (such as the FOV ``mask``) stay in ``engine.state.batch``. Both are
decollated into lists of per-image dicts when ``decollate=True`` (MONAI's default), so the adapter
reads ``output_transform(engine.state.output)`` for (pred, label) and ``batch_keys`` from
``engine.state.batch``, per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from ignite import distributed as idist
from ignite.engine import Engine
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.handlers import from_engine

__all__ = ["PooledMetric", "PooledMetricHandler"]


class PooledMetric(Protocol):
    counts: torch.Tensor

    def reset(self) -> None: ...

    def update(self, pred: torch.Tensor, label: torch.Tensor, *extra: torch.Tensor) -> None: ...


def _take(data: Any, key: str) -> Any:
    """``data[key]`` of a batch dict, or the list of ``item[key]`` of a decollated batch."""
    return [item[key] for item in data] if isinstance(data, list) else data[key]


class PooledMetricHandler(Metric):
    """Feeds a pooled metric from a MONAI engine and publishes its values.

    Args:
        metric: the accumulator (reset / update / counts).
        compute_fn: returns the dict of values from the (rank-summed) accumulator.
        primary: key of the value published under the attached name.
        prefix: prepended to every key published in ``engine.state.metrics``.
        output_transform: extracts (pred, label) from ``engine.state.output``: batch-first tensors, or
            lists of channel-first tensors after decollation.
        batch_keys: keys read from ``engine.state.batch`` and passed to ``metric.update`` after
            (pred, label), e.g. ``("mask",)``.
    """

    def __init__(
        self,
        metric: PooledMetric,
        compute_fn: Callable[[], dict[str, float]],
        primary: str,
        prefix: str = "",
        output_transform: Callable = from_engine(["pred", "label"]),
        batch_keys: Sequence[str] = (),
    ) -> None:
        self.metric = metric
        self._compute_fn = compute_fn
        self.primary = primary
        self.prefix = prefix
        self.batch_keys = tuple(batch_keys)
        super().__init__(output_transform=output_transform)

    @reinit__is_reduced
    def reset(self) -> None:
        self.metric.reset()
        self._counts_reduced = False

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """``output`` is (pred, label, *batch_keys values), each a batch-first tensor or a list of
        channel-first tensors (one per image)."""
        self._counts_reduced = False
        if isinstance(output[0], torch.Tensor):
            self.metric.update(*output)
            return
        for per_image in zip(*output, strict=True):
            self.metric.update(*(torch.as_tensor(t)[None] for t in per_image))

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        pred, label = self._output_transform(engine.state.output)
        self.update((pred, label, *(_take(engine.state.batch, key) for key in self.batch_keys)))

    def compute(self) -> dict[str, float]:
        # each rank scored its own images: sum the pooled counts once per epoch, so every rank reports the same
        if not self._counts_reduced:
            self.metric.counts = idist.all_reduce(self.metric.counts)
            self._counts_reduced = True
        return self._compute_fn()

    def completed(self, engine: Engine, name: str) -> None:
        values = self.compute()
        engine.state.metrics.update({f"{self.prefix}{key}": value for key, value in values.items()})
        engine.state.metrics[name] = values[self.primary]
