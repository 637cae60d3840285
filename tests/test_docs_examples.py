"""The documentation works as written: every Python block of README.md and of every page
under docs/ runs, and every ``sfn-worker`` subcommand a shell block names exists.

Blocks are found with pytest-examples (``find_examples``) and each runs in a fresh
interpreter in a temporary directory, with ``-W error`` like the suite. Not with its
``EvalExample.run``: that executes the block in this process as ``__main__`` and leaves it
in ``sys.modules``, which process-mode tests later in the session would re-import in every
spawned child, and blocks that run an app would configure this process's logging.

- A block whose first line is ``# name.py`` (``# media/worker.py``) is a module: it is
  written under that name, so later blocks of the same page can import it.
- A block that defines top-level ``test_*`` functions is a team's test module: it runs
  under pytest as a project of its own would (strict, warnings are errors, no
  pytest-asyncio: the worker's own pytest plugin runs ``async def`` tests and gives its
  fixtures), so a testing recipe is tested, not only defined.
- A block meant to be partial carries ``<!-- partial -->`` on the line before its fence;
  it is compiled only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_examples import CodeExample, find_examples

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PARTIAL = "<!-- partial -->"
MODULE_NAME = re.compile(r"# ((?:\w+/)*\w+\.py)\n")
TEST_FUNCTION = re.compile(r"^(?:async )?def (test_\w+)", re.M)
PYTEST_INI = "[pytest]\nfilterwarnings = error\naddopts = --strict-markers --strict-config\n"
LINK = re.compile(r"\]\(([^)\s]+)\)")
SHELL_BLOCK = re.compile(r"^ *```(?:sh|bash|shell|console)\n(.*?)^ *```", re.M | re.S)
SUBCOMMAND = re.compile(r"(?:\bsfn-worker|python -m sfn_worker)\s+([a-z][\w-]*)")


def _examples() -> list[CodeExample]:
    return [example for page in PAGES for example in find_examples(page)]


def _name(example: CodeExample) -> str:
    return f"{example.path.relative_to(REPO)}:{example.start_line}"


def _is_partial(example: CodeExample) -> bool:
    lines = example.path.read_text().splitlines()
    # start_line is the fence's line number (1-based): the marker is the line before it.
    return example.start_line >= 2 and lines[example.start_line - 2].strip() == PARTIAL


def _module_name(example: CodeExample) -> str | None:
    match = MODULE_NAME.match(example.source)
    return match[1] if match else None


EXAMPLES = _examples()


def test_the_readme_and_the_pages_have_examples() -> None:
    pages = {example.path for example in EXAMPLES}
    assert REPO / "README.md" in pages
    assert REPO / "docs" / "handlers.md" in pages


def test_the_readmes_links_reach_files_that_exist() -> None:
    # The site's own links are checked by `mkdocs build --strict`; the README is not part of it.
    targets = [m[1] for m in LINK.finditer((REPO / "README.md").read_text())]
    local = [t.split("#", 1)[0] for t in targets if not t.startswith(("http:", "https:", "#"))]
    assert local, "the README links no page"
    assert [t for t in local if not (REPO / t).exists()] == []


def test_every_partial_marker_stands_before_a_python_block() -> None:
    misplaced = []
    for page in PAGES:
        lines = [*page.read_text().splitlines(), ""]
        for number, line in enumerate(lines[:-1], 1):
            if line.strip() == PARTIAL and not lines[number].lstrip().startswith("```py"):
                misplaced.append(f"{page.relative_to(REPO)}:{number}")
    assert misplaced == [], f"{PARTIAL} must be the line just before a ```python fence"


@pytest.mark.parametrize("example", EXAMPLES, ids=_name)
def test_python_block_runs(example: CodeExample, tmp_path: Path) -> None:
    if _is_partial(example):
        compile(example.source, _name(example), "exec")
        return
    # The page's modules before this block, as files a later block can import.
    for earlier in EXAMPLES:
        if earlier.path != example.path or earlier.start_line >= example.start_line:
            continue
        module = _module_name(earlier)
        if module is not None and not _is_partial(earlier):
            (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / module).write_text(earlier.source)
    script = tmp_path / (_module_name(example) or f"example_{example.start_line}.py")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(example.source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    tests = TEST_FUNCTION.findall(example.source)
    if tests:
        (tmp_path / "pytest.ini").write_text(PYTEST_INI)
        command = ["-m", "pytest", "-p", "no:asyncio", "-p", "no:cacheprovider", "-q", str(script)]
    else:
        command = ["-W", "error", str(script)]
    done = subprocess.run(
        [sys.executable, *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    output = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, f"{_name(example)} failed:\n{output}"
    if tests:
        assert f"{len(tests)} passed" in done.stdout, f"{_name(example)}:\n{output}"


def _subcommands() -> list[str]:
    found = {
        match[1]
        for page in PAGES
        for block in SHELL_BLOCK.findall(page.read_text())
        for line in block.splitlines()
        for match in SUBCOMMAND.finditer(line.split("#", 1)[0])  # commands, not comments
    }
    return sorted(found)


def test_shell_blocks_name_subcommands() -> None:
    assert {"run", "check"} <= set(_subcommands())


@pytest.mark.parametrize("subcommand", _subcommands())
def test_every_subcommand_a_shell_block_names_exists(subcommand: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sfn_worker", subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, f"`sfn-worker {subcommand}` named in the docs:\n{done.stderr}"
