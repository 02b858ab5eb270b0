"""What every bench script shares: where things are, the machine line of a results file, markdown tables, and a
member of a shipped ensemble taken out as the weights of one network.

The scripts run as ``python bench/SCRIPT.py``, which puts this folder first on ``sys.path``: they ``import common``.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

# medseg is imported where it is used: the inference bench measures its child processes' resident set from an
# interpreter that has loaded torch alone
REPO = Path(__file__).resolve().parents[1]
# the real datasets, found as the tests find them
DATA = Path(os.environ.get("MEDSEG_DATA_ROOT", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"
# weights and scores of runs in progress, not kept
WORK = REPO / "bench" / "work"


def machine_line() -> str:
    """Where a results file was measured, as a training record names it: ``"AMD EPYC, 2 cores, torch 2.13.0+cpu,
    Python 3.11.7"`` (the one description, :func:`medseg.tracking.machine_description`)."""
    from medseg.tracking import machine_description

    return f"{machine_description()}, torch {torch.__version__}, Python {platform.python_version()}"


def shown(path: Path) -> str:
    """``path`` as a command typed in the repository root names it (``../shared/data/DRIVE``)."""
    return os.path.relpath(path, REPO)


def same_mask_share(pairs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
    """The share of all pixels inside the regions whose mask is the reference's, over ``(mask, reference mask,
    inside)`` triples of (H, W) boolean arrays (the owner's same-mask criterion, issue #37)."""
    same = total = 0
    for ours, theirs, inside in pairs:
        same += int((ours == theirs)[inside].sum())
        total += int(inside.sum())
    return same / total


def markdown_table(header: list[str], rows: list[list[str]], text_columns: int | tuple[int, ...] = 1) -> list[str]:
    """The lines of a markdown table: figures right-aligned, text left-aligned; ``text_columns``: the number of
    leading text columns, or the index of each text column."""
    text = range(text_columns) if isinstance(text_columns, int) else text_columns
    align = ["---" if column in text else "---:" for column in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def bundle_arguments(doc: str) -> list[Path]:
    """The bundle folders given on a script's command line (as typed), the first line of ``doc`` its help."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    return parser.parse_args().bundles


def commands_section(heading: str, commands: list[str]) -> list[str]:
    """The closing lines of a results file: ``heading``, then one markdown line per command that made a row."""
    return [heading, "", *commands, ""]


def save_member(bundle: Path, member: int, path: Path) -> Path:
    """Write member ``member`` of ``bundle``'s shipped ensemble (``models/model.pt``) to ``path`` as the float32
    weights of one network; returns ``path``."""
    from medseg.inference import read_state_dict
    from medseg.networks import member_state_dict

    weights = member_state_dict(read_state_dict(bundle / "models" / "model.pt"), member)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({name: value.float() for name, value in weights.items()}, path)
    return path
