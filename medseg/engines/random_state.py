"""``RandomStates``: the random state of a training run as a checkpointable object.

Resuming from a checkpoint gives the same weights as training straight through only if the random draws
after the resume are the same too: batch order (torch), patch positions, flips and intensity jitter (every
MONAI randomizable transform keeps its own ``numpy.random.RandomState``), and anything drawn from Python's or
NumPy's global generators. Put a ``RandomStates`` in the checkpoint's ``save_dict`` and in the resume
loader's ``load_dict``. Its state dict holds only tensors, ints, floats and strings, so checkpoints still
load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable

__all__ = ["RandomStates"]


def _randomizables(obj: Any, seen: set[int]) -> Iterator[Randomizable]:
    """Every ``Randomizable`` reachable from ``obj`` through attributes and lists, depth first, once each."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Randomizable):
        yield obj
    children = obj if isinstance(obj, (list, tuple)) else getattr(obj, "__dict__", {}).values()
    for child in children:
        if isinstance(child, (Randomizable, list, tuple)) or hasattr(child, "transforms"):
            yield from _randomizables(child, seen)


def _numpy_state_to_dict(state: tuple) -> dict[str, Any]:
    name, keys, position, has_gauss, cached_gaussian = state
    return {
        "name": name,
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "position": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _numpy_state_from_dict(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["position"], state["has_gauss"], state["cached_gaussian"]


class RandomStates:
    """Python, NumPy and torch global generators plus the generator of every randomizable transform.

    Args:
        transforms: transform chains (``Compose``) or transforms whose generators are saved, found
            recursively (e.g. the cropper inside ``RandCropByPosNegLabeld``).
    """

    def __init__(self, transforms: Sequence[Any] = ()) -> None:
        self.transforms = tuple(transforms)

    def _transform_generators(self) -> list[Randomizable]:
        seen: set[int] = set()
        return [r for chain in self.transforms for r in _randomizables(chain, seen)]

    def state_dict(self) -> dict[str, Any]:
        version, python_state, gauss = random.getstate()
        return {
            "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
            "numpy": _numpy_state_to_dict(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "transforms": [_numpy_state_to_dict(r.R.get_state()) for r in self._transform_generators()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        generators = self._transform_generators()
        if len(generators) != len(state["transforms"]):
            raise ValueError(
                f"checkpoint holds {len(state['transforms'])} transform generators, this run has {len(generators)}: "
                "the transform chain changed since it was saved"
            )
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
        np.random.set_state(_numpy_state_from_dict(state["numpy"]))
        torch.set_rng_state(state["torch"])
        for generator, saved in zip(generators, state["transforms"]):
            generator.R.set_state(_numpy_state_from_dict(saved))
