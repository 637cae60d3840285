"""The Reliability table (docs/reliability.md) and the hostile suite name each other: every
test in ``tests/hostile/`` is a row's evidence, and every test a row names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "docs" / "reliability.md"
HOSTILE = REPO / "tests" / "hostile"
# `test_name`, `test_name...` (a prefix) or `test_name[param]`.
REFERENCE = re.compile(r"`(test_\w+)(\.\.\.)?(?:\[[^\]`]*\])?`")


def _references() -> list[tuple[str, bool]]:
    # The page holds one table: its rows are the lines that start with "|".
    rows = [line for line in TABLE.read_text().splitlines() if line.startswith("|")]
    assert rows, f"no table in {TABLE}"
    return [(m[1], bool(m[2])) for row in rows for m in REFERENCE.finditer(row)]


def _tests_in(paths: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
                "test_"
            ):
                found[node.name] = path
    return found


def _matches(name: str, reference: tuple[str, bool]) -> bool:
    target, prefix = reference
    return name.startswith(target) if prefix else name == target


def test_every_hostile_test_is_a_row_of_the_reliability_table() -> None:
    references = _references()
    hostile = _tests_in(sorted(HOSTILE.glob("test_*.py")))
    assert hostile, "the hostile suite is empty"
    missing = sorted(n for n in hostile if not any(_matches(n, r) for r in references))
    assert missing == [], (
        "hostile tests without a row in the Reliability table (docs/reliability.md)"
    )


def test_every_test_the_table_names_exists() -> None:
    everything = _tests_in(sorted((REPO / "tests").rglob("test_*.py")))
    unknown = sorted(
        ref[0] + ("..." if ref[1] else "")
        for ref in _references()
        if not any(_matches(n, ref) for n in everything)
    )
    assert unknown == [], (
        "the Reliability table (docs/reliability.md) names tests that do not exist"
    )
