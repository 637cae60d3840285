"""What a team checks before adopting the worker: a license, types its checker can read, a
changelog, and one version everywhere (package, command, image label)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from .test_config_files import dockerfile_args

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def test_the_license_is_the_one_pyproject_names() -> None:
    text = (REPO / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "MIT"
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 sfn-activity-worker contributors" in text


def test_one_version_for_the_package_the_command_and_the_image() -> None:
    assert version("sfn-activity-worker") == VERSION
    command = shutil.which("sfn-worker", path=str(Path(sys.executable).parent))
    assert command is not None
    shown = subprocess.run(
        [command, "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    assert shown.stdout.split() == ["sfn-worker", VERSION]
    assert dockerfile_args()["VERSION"] == VERSION
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile
    make = subprocess.run(
        ["make", "-n", "image"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert f"--build-arg VERSION={VERSION} " in make.stdout


def test_the_changelog_has_unreleased_changes_and_this_version() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[([^\]]+)\]", text, flags=re.MULTILINE)
    assert versions[0] == "Unreleased"
    assert VERSION in versions, "a version bump comes with its changelog section"
    assert re.search(rf"^## \[{re.escape(VERSION)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text, re.M)


# A team's handler module, with every decorator a team uses and the testing helpers.
USER_MODULE = """
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sfn_worker import App, TaskContext, TaskFailed, non_blocking
from sfn_worker.testing import Failure, Outcome, Success, run_handler, run_handler_sync

app = App()


@app.lifespan
async def resources(app: App) -> AsyncIterator[dict[str, str]]:
    yield {"bucket": "media"}


@app.middleware
async def audit(
    task_input: Any, ctx: TaskContext, call_next: Callable[[Any, TaskContext], Awaitable[Any]]
) -> Any:
    return await call_next(task_input, ctx)


@app.process_init
def open_models() -> dict[str, int]:
    return {"models": 1}


@app.activity("render", concurrency=4)
async def render(task_input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    if "url" not in task_input:
        raise TaskFailed("BadRequest", "input needs a url")
    ctx.heartbeat()
    return {"url": task_input["url"], "token": ctx.token_hash}


@app.callback_queue("https://sqs.us-east-1.amazonaws.com/123456789012/jobs")
@non_blocking
def route(task_input: dict[str, Any], ctx: TaskContext) -> dict[str, str]:
    return {"queue": "fast" if ctx.shutdown_requested.is_set() else "slow"}


async def check_render() -> Outcome:
    outcome = await run_handler(render, {"url": "x"}, app=app)
    assert isinstance(outcome, (Success, Failure))
    return outcome


def check_route() -> str:
    outcome = run_handler_sync(route, {})
    return outcome.output if isinstance(outcome, Success) else outcome.error
"""


@pytest.mark.slow
def test_a_teams_handlers_type_check_strictly(tmp_path: Path) -> None:
    assert (REPO / "service" / "sfn_worker" / "py.typed").is_file()
    (tmp_path / "team_jobs.py").write_text(USER_MODULE)
    mypy = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache")]
    checked = subprocess.run(
        [*mypy, "team_jobs.py"],
        cwd=tmp_path,  # none of this repository's mypy configuration
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_sdist_includes_only_the_top_level_files_it_names() -> None:
    """hatch reads include entries as gitignore patterns: a bare "README.md" also took
    examples/custom-image/README.md and tests/hostile/README.md into the sdist."""
    include = PYPROJECT["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
    assert include
    assert [entry for entry in include if not entry.startswith("/")] == []
