"""Small helpers every part of medseg shares: files written all at once, and plain-text tables.

A file or folder medseg writes is either complete or absent: it is written under a temporary name beside its
target and renamed into place only when the writing succeeded, and the temporary name is removed on any failure
(an interrupt included), so a crash never leaves a half-written output or destroys the previous one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["atomic_folder", "atomic_path", "atomic_write_text", "format_table", "full_suffix", "one_line"]


def one_line(error: BaseException | str, limit: int = 500) -> str:
    """A library's error message on one line (torch lists one mismatch a line, MONAI every missing key), cut to
    ``limit`` characters, for a report that names the file on that line."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def full_suffix(path: str | os.PathLike) -> str:
    """Lower-case suffix of ``path``, with ``.nii.gz`` as one suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file path beside ``path`` to write to; it replaces ``path`` when the block ends normally.

    The temporary name keeps the suffix of ``path`` (writers such as PIL, nibabel and matplotlib pick their format
    from it). If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=full_suffix(path), dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path`; returns ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; it becomes ``path`` when the block ends normally.

    ``path`` must not exist or be an empty folder (``FileExistsError`` otherwise, before anything is written). If
    the block raises, the temporary folder and everything in it are removed.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path}: exists and is not an empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        if path.exists():
            path.rmdir()
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], rule: bool = True) -> str:
    """A plain-text table: columns padded to their widest cell, with ``rule`` a line of dashes under the header.

    Floats are written with four decimals, every other cell with ``str``.
    """
    cells = [[f"{cell:.4f}" if isinstance(cell, float) else str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    if rule:
        lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
