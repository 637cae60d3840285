"""docs/testing.md: every Python block is a team's test module, and passes as one, in a
project of its own without pytest-asyncio (the plugin runs its async tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(), flags=re.MULTILINE | re.DOTALL)


@pytest.mark.slow
def test_every_python_block_of_the_testing_page_passes_as_a_test_module(tmp_path: Path) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 4
    expected = 0
    for number, block in enumerate(blocks):
        tests = re.findall(r"^(?:async )?def test_\w+", block, flags=re.MULTILINE)
        assert tests, f"block {number} shows no test"
        expected += len(tests)
        (tmp_path / f"test_block_{number}.py").write_text(block)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings = error\naddopts = --strict-markers --strict-config\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:asyncio", "-p", "no:cacheprovider", "-rA"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{expected} passed" in result.stdout, result.stdout


def test_the_summary_shown_is_what_api_quotas_prints() -> None:
    from sfn_worker.testing import ApiQuotas

    shown = re.search(r"^```\n(API .*?)^```$", PAGE.read_text(), re.MULTILINE | re.DOTALL)
    assert shown is not None
    assert shown.group(1).splitlines()[0] == ApiQuotas().summary().splitlines()[0]
