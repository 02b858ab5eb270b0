"""Small helpers every part of medseg shares: files written all at once, plain-text tables, and a library's log
record silenced where medseg calls it.

A file or folder medseg writes is either complete or absent: it is written under a temporary name beside its
target and renamed into place only when the writing succeeded, and the temporary name is removed on any failure
(an interrupt included), so a crash never leaves a half-written output or destroys the previous one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "atomic_folder", "atomic_path", "atomic_write_text", "dropped_log_records", "format_table", "full_suffix", "one_line"
]


def one_line(error: BaseException | str, limit: int = 500) -> str:
    """A library's error message on one line (torch lists one mismatch a line, MONAI every missing key), cut to
    ``limit`` characters, for a report that names the file on that line."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def full_suffix(path: str | os.PathLike) -> str:
    """Lower-case suffix of ``path``, with ``.nii.gz`` as one suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _create_beside(path: Path, create: Callable[[Path], None]) -> Path:
    """A new hidden name beside ``path`` (keeping its suffix), created by ``create``, which raises
    ``FileExistsError`` if the name is taken. ``tempfile.mkstemp`` and ``mkdtemp`` create 0600 files and 0700
    folders whatever the umask; ``create`` makes it with 0666 or 0777, so the umask applies as to a plain write."""
    while True:
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}{full_suffix(path)}"
        try:
            create(candidate)
            return candidate
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file path beside ``path`` to write to; it replaces ``path`` when the block ends normally.

    The temporary name keeps the suffix of ``path`` (writers such as PIL, nibabel and matplotlib pick their format
    from it). If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_beside(path, lambda name: os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)))
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
    staging = _create_beside(path, lambda name: os.mkdir(name, 0o777))
    try:
        yield staging
        if path.exists():
            path.rmdir()
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def dropped_log_records(logger_name: str, prefix: str) -> Iterator[None]:
    """Within the block, drop the records of the logger ``logger_name`` whose message starts with ``prefix``: a
    library's warning that says nothing to medseg's users where medseg makes the call. Every other record passes.
    """

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    logger = logging.getLogger(logger_name)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], rule: bool = True, max_width: int | None = None
) -> str:
    """A plain-text table: columns padded to their widest cell, with ``rule`` a line of dashes under the header.

    Floats are written with four decimals, every other cell with ``str``. With ``max_width`` (a terminal's
    columns), the widest columns are narrowed in turn, their long cells cut and ending in ``...``, until the lines
    fit (a line that wraps breaks the columns); no column becomes narrower than its header or 8 characters.
    """
    cells = [[f"{cell:.4f}" if isinstance(cell, float) else str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    if max_width is not None:
        floors = [max(8, len(name)) for name in header]
        while sum(widths) + 2 * (len(widths) - 1) > max_width:
            widest = max(range(len(widths)), key=lambda i: widths[i] - floors[i])
            if widths[widest] <= floors[widest]:
                break
            widths[widest] -= 1
        cells = [[cell if len(cell) <= width else cell[:width - 3] + "..." for cell, width in zip(row, widths)]
                 for row in cells]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    if rule:
        lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
