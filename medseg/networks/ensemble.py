"""Ensembles of independently trained networks, shipped and run as one network."""

from __future__ import annotations

import copy
import re
from collections.abc import Container, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn

__all__ = [
    "Ensemble", "IncompatibleMember", "ensemble_of", "ensemble_override", "ensemble_size", "ensemble_state_dict",
    "member_state_dict",
]

_MEMBER_KEY = re.compile(r"members\.\d+\.")


class Ensemble(nn.Module):
    """The mean of the logits of its members, networks with the same input and output shapes.

    Shapes: (B, C_in, *S) -> (B, C_out, *S), those of every member. Averaging logits rather than probabilities
    keeps the output a logit map, so activations, thresholds and sliding-window inference treat the ensemble
    exactly as one of its members. The state dict holds member ``k``'s weights under ``members.k.``.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        """
        Args:
            members: at least one network; each is called on the whole input.
        """
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member network")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.members[0](x)
        for member in self.members[1:]:
            logits = logits + member(x)
        return logits / len(self.members)


def ensemble_of(network: nn.Module, members: int) -> nn.Module:
    """``network`` itself for ``members == 1`` (so a single network's weights load unchanged), otherwise an
    :class:`Ensemble` of ``members`` independent copies of it."""
    if members < 1:
        raise ValueError(f"members must be at least 1, got {members}")
    if members == 1:
        return network
    return Ensemble([copy.deepcopy(network) for _ in range(members)])


def ensemble_size(state_dict: Mapping[str, torch.Tensor]) -> int:
    """How many members the weights ``state_dict`` hold: those of an :class:`Ensemble` (every key under
    ``members.<k>.``) or 1, the weights of a single network."""
    if not state_dict or not all(_MEMBER_KEY.match(name) for name in state_dict):
        return 1
    return len({name.split(".", 2)[1] for name in state_dict})


class IncompatibleMember(ValueError):
    """Weights of ensemble member ``member`` that do not fit the network of the first member."""

    def __init__(self, member: int, problem: str) -> None:
        super().__init__(problem)
        self.member = member


def ensemble_state_dict(state_dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The state dict of an :class:`Ensemble` (through :func:`ensemble_of`) of members with ``state_dicts``; a single
    state dict is returned as it is, as :func:`ensemble_of` returns a single network itself.

    Raises:
        IncompatibleMember: for weights that already hold an ensemble, or whose names or shapes differ from the
            first member's (the members are copies of one network).
    """
    if not state_dicts:
        raise ValueError("an ensemble needs the weights of at least one member")
    if len(state_dicts) == 1:
        return dict(state_dicts[0])
    first = {name: value.shape for name, value in state_dicts[0].items()}
    for k, state in enumerate(state_dicts):
        if ensemble_size(state) > 1:
            raise IncompatibleMember(k, "these weights already hold an ensemble, which cannot be a member of another")
        shapes = {name: value.shape for name, value in state.items()}
        if shapes != first:
            different = sorted(set(shapes) ^ set(first)) or sorted(n for n in first if shapes[n] != first[n])
            raise IncompatibleMember(k, f"not the same network as the first member's weights ({different[0]} "
                                        f"differs{f' and {len(different) - 1} more' if len(different) > 1 else ''})")
    return {f"members.{k}.{name}": value for k, state in enumerate(state_dicts) for name, value in state.items()}


def member_state_dict(state_dict: Mapping[str, torch.Tensor], member: int) -> dict[str, torch.Tensor]:
    """The weights of member ``member`` of an ensemble's ``state_dict``, as those of a single network (the inverse of
    :func:`ensemble_state_dict`)."""
    size = ensemble_size(state_dict)
    if size == 1 or not 0 <= member < size:
        raise ValueError(f"no member {member} in weights of {size} network{'s' if size > 1 else ''}")
    prefix = f"members.{member}."
    return {name[len(prefix):]: value for name, value in state_dict.items() if name.startswith(prefix)}


def ensemble_override(
    config: Container[str], state_dict: Mapping[str, torch.Tensor], weights: str, bundle: str | Path
) -> dict[str, int]:
    """The override under which ``bundle``'s ``config`` builds the network whose weights are ``state_dict``.

    A bundle that ships an ensemble (its config has an ``ensemble_members`` id) builds as many members as the
    weights hold, one trained network's as well as the shipped ensemble's: ``{"ensemble_members": N}``. A bundle
    that builds one network needs no override for one network's weights and raises ``ValueError`` naming
    ``weights`` (the file or files they come from) for an ensemble's.
    """
    members = ensemble_size(state_dict)
    if "ensemble_members" in config:
        return {"ensemble_members": members}
    if members > 1:
        raise ValueError(f"{weights}: the weights of an ensemble of {members} networks; {bundle} builds one network")
    return {}
