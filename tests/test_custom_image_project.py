"""examples/custom-image works as a team's own repository: copied out alone, its tests pass
with its own pytest settings and this repository's installed worker (no asyncio settings)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom-image"


def test_the_example_is_a_project_of_its_own() -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    dependencies = project["project"]["dependencies"]
    assert any(d.startswith("sfn-activity-worker @ git+https://") for d in dependencies)
    pytest_settings = project["tool"]["pytest"]["ini_options"]
    assert not any(key.startswith("asyncio") for key in pytest_settings)
    assert (EXAMPLE / "README.md").is_file()


@pytest.mark.slow
def test_its_tests_pass_when_copied_out(tmp_path: Path) -> None:
    team = tmp_path / "media-jobs"
    shutil.copytree(EXAMPLE, team, ignore=shutil.ignore_patterns("__pycache__", ".*cache"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
        cwd=team,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"rootdir: {team}" in result.stdout  # its own settings, not this repository's
    assert "4 passed" in result.stdout
