"""The package's and the bench scripts' source has one home per piece of code: no block of six or more lines stands
twice."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "medseg"
# the scripts that measure bench/results share their helpers through bench/common.py
BENCH = REPO / "bench"
BLOCK = 6


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of ``path`` outside import statements, whose name
    lists a package's ``__init__`` repeats by design."""
    source = path.read_text()
    imports = {line for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))
               for line in range(node.lineno, node.end_lineno + 1)}
    return [(number, text.strip()) for number, text in enumerate(source.splitlines(), 1)
            if text.strip() and number not in imports]


def repeated_blocks(root: Path) -> dict[tuple[str, ...], list[str]]:
    """Every run of ``BLOCK`` consecutive code lines found in more than one place under ``root``, with where."""
    places = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        lines = code_lines(path)
        for start in range(len(lines) - BLOCK + 1):
            block = tuple(text for _, text in lines[start:start + BLOCK])
            places[block].append(f"{path.relative_to(root)}:{lines[start][0]}")
    return {block: where for block, where in places.items() if len(where) > 1}


@pytest.mark.parametrize("root", [PACKAGE, BENCH], ids=lambda root: root.name)
def test_no_block_of_six_lines_stands_twice(root):
    repeated = repeated_blocks(root)
    assert not repeated, "\n\n".join(f"{', '.join(where)}:\n" + "\n".join(block) for block, where in repeated.items())


def test_the_check_finds_a_copied_block(tmp_path):
    body = "\n".join(f"    total = total + {k}" for k in range(BLOCK))
    (tmp_path / "a.py").write_text(f"import os\n\ndef first(total):\n{body}\n    return total\n")
    (tmp_path / "b.py").write_text(f"def second(total):\n    total = -total\n{body}\n")
    (tmp_path / "c.py").write_text("from os import (\n" + "".join(f"    name{k},\n" for k in range(BLOCK)) + ")\n")
    (tmp_path / "d.py").write_text("from os import (\n" + "".join(f"    name{k},\n" for k in range(BLOCK)) + ")\n")
    assert list(repeated_blocks(tmp_path).values()) == [["a.py:4", "b.py:3"]]
