"""What a target (``module:handler`` or ``module:app``) serves, asked of a fresh process.

The dev command never imports the user's code itself: the code changes under it, may fail
to import, or have side effects. ``python -m sfn_worker.dev.discover TARGET`` (run in the
project, with it on sys.path) prints one JSON line; ``discover`` runs it and reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# Activity names: 1-80 characters (config.NAME_PATTERN); the module and function say whose.
MAX_NAME = 80


@dataclass(frozen=True)
class Source:
    kind: str  # its config class's kind: dev/kinds.py says what the session does for it
    name: str  # the activity's or queue's name, created in LocalStack under it
    key: str  # SFN_<KEY>_* of the app's per-source settings ("" in the single form)


@dataclass(frozen=True)
class Target:
    path: str
    form: str  # "handler" | "app"
    sources: tuple[Source, ...]
    watch_dir: Path  # the directory of the target's module
    refused: str | None = None  # the worker's refusal of its settings, as it would say it


class DiscoveryError(Exception):
    """The target cannot be loaded; the message says why (the import's own error), and
    ``reason`` in a few words (for `dev start`: "SyntaxError in my_jobs.py line 3")."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message.splitlines()[-1][:200]


def single_activity_name(path: str) -> str:
    module, _, function = path.partition(":")
    return f"dev-{module}-{function}"[:MAX_NAME]


def _describe(path: str) -> dict[str, Any]:
    from ..app import App, LoadError, import_object
    from ..config import activity_key
    from .kinds import SINGLE_KIND, app_sources

    if ":" not in path:
        raise LoadError(f"{path!r}: expected module:handler or module:app")
    target = import_object(path, "target")
    module = sys.modules[path.partition(":")[0]]
    watch_dir = str(Path(module.__file__ or ".").resolve().parent)
    if isinstance(target, App):
        sources = [
            {"kind": kind, "name": name, "key": activity_key(name)}
            for kind, name in app_sources(target)
        ]
        if not sources:
            raise LoadError(f"{path!r}: the app registers no activity and no callback queue")
        return {"form": "app", "sources": sources, "watch_dir": watch_dir}
    if not callable(target):
        raise LoadError(f"{path!r} is a {type(target).__name__}: not a handler nor an App")
    name = single_activity_name(path)
    return {
        "form": "handler",
        "sources": [{"kind": SINGLE_KIND, "name": name, "key": ""}],
        "watch_dir": watch_dir,
    }


def child_environment(project: Path, base: dict[str, str]) -> dict[str, str]:
    """The project first on sys.path; no bytecode written, so an edit saved within the
    second of the last import is never hidden by a stale .pyc."""
    env = dict(base)
    paths = [str(project), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _command(path: str) -> list[str]:
    return [sys.executable, "-m", "sfn_worker.dev.discover", path]


def _too_slow(path: str, timeout: float) -> DiscoveryError:
    return DiscoveryError(
        f"cannot load {path!r}: importing it took more than {timeout:.0f} s "
        "(does the module do work at import?)"
    )


def _answer(path: str, returncode: int, stdout: str, stderr: str) -> Target:
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines:
        why = stderr.strip("\n").rstrip() or f"exit code {returncode}"
        if "\n" in why:  # a traceback: from its own line, indented as Python prints it
            why = f"\n{why}"
        reason = ""
        with contextlib.suppress(ValueError, TypeError, IndexError):
            reason = str(json.loads(lines[-1])["error"])
        raise DiscoveryError(f"cannot load {path!r}: {why}", reason)
    try:
        found = json.loads(lines[-1])
    except ValueError:
        raise DiscoveryError(
            f"cannot load {path!r}: its discovery printed {lines[-1][:200]!r}, not its answer"
        ) from None
    return Target(
        path=path,
        form=found["form"],
        sources=tuple(Source(**source) for source in found["sources"]),
        watch_dir=Path(found["watch_dir"]),
        refused=found.get("refused"),
    )


def discover(path: str, project: Path, env: dict[str, str], timeout: float = 120.0) -> Target:
    try:
        done = subprocess.run(
            _command(path),
            cwd=project,
            env=child_environment(project, env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _too_slow(path, timeout) from None
    return _answer(path, done.returncode, done.stdout, done.stderr)


async def discover_unless(
    stop: asyncio.Event, path: str, project: Path, env: dict[str, str], timeout: float = 120.0
) -> Target | None:
    """``discover`` during a session: ``stop`` (a signal) ends a slow import at once (None).
    The child has its own session: a Ctrl-C reaches the dev command, which ends it, instead
    of printing the import's KeyboardInterrupt as a load error."""
    child = await asyncio.create_subprocess_exec(
        *_command(path),
        cwd=project,
        env=child_environment(project, env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    talking = asyncio.ensure_future(child.communicate())
    stopping = asyncio.ensure_future(stop.wait())
    ended = False  # by the import's own end (not by a stop or the timeout)
    try:
        await asyncio.wait(
            {talking, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        ended = talking.done()
    finally:
        stopping.cancel()
        await asyncio.gather(stopping, return_exceptions=True)
        if not talking.done():
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        stdout, stderr = await talking
    if not ended:
        if stop.is_set():
            return None
        raise _too_slow(path, timeout)
    return _answer(path, child.returncode or 0, stdout.decode(), stderr.decode())


def _refusal(path: str, described: dict[str, Any]) -> str | None:
    """What the worker would say of its settings (a misspelt SFN_* name, a bad value) in
    this session, said before LocalStack starts rather than by each worker it would run."""
    from ..app import LoadError
    from ..cli import build_app
    from ..config import resolve
    from ..settings import SettingsError, load_settings
    from .kinds import EXAMPLE_ARN, dev_kind
    from .resources import Created
    from .supervisor import worker_environment

    target = Target(
        path=path,
        form=described["form"],
        sources=tuple(Source(**source) for source in described["sources"]),
        watch_dir=Path(described["watch_dir"]),
    )
    created = [
        Created(
            source, dev_kind(source.kind).example(source.name), f"{EXAMPLE_ARN}:stateMachine:dev"
        )
        for source in target.sources
    ]
    env = worker_environment(target, created, "http://127.0.0.1:1", os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        settings = load_settings()
        app = build_app(settings, path if target.form == "app" else None)
        resolve(app, settings, os.environ)
    except (SettingsError, LoadError) as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - advice only: anything else is the worker's to say
        return None
    return None


def _user_error(exc: BaseException) -> tuple[str, str]:
    """An exception raised by the user's module at import, as Python shows it for a script:
    its frames only (not discovery's nor importlib's), then the file, line, caret and
    message; and a few words for `dev start` ("SyntaxError in my_jobs.py line 3")."""
    internal = (str(Path(__file__).resolve().parent.parent), str(Path(importlib.__file__).parent))
    shown = traceback.TracebackException.from_exception(exc)
    frames = [
        frame
        for frame in shown.stack
        if not frame.filename.startswith("<frozen ")
        and not str(Path(frame.filename).resolve()).startswith(internal)
    ]
    shown.stack = traceback.StackSummary.from_list(frames)
    where: tuple[str | None, int | None] = (None, None)
    if isinstance(exc, SyntaxError):
        where = (exc.filename, exc.lineno)
    elif frames:
        where = (frames[-1].filename, frames[-1].lineno)
    reason = type(exc).__name__
    if where[0]:
        name = where[0]
        with contextlib.suppress(ValueError):
            name = str(Path(name).resolve().relative_to(Path.cwd()))
        reason += f" in {name} line {where[1]}"
    return "".join(shown.format(chain=False)).rstrip(), reason


def _failed_at_import(exc: BaseException, answer: IO[str]) -> int:
    shown, reason = _user_error(exc)
    print(f"\n{shown}", file=sys.stderr)
    answer.write(json.dumps({"error": reason}) + "\n")
    return 1


def main() -> int:
    from ..app import LoadError

    sys.path.insert(0, os.getcwd())
    # The answer gets stdout to itself: what the module prints, at import or at exit
    # (atexit, a thread), goes to stderr instead.
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with answer:
        try:
            described = _describe(sys.argv[1])
        except LoadError as exc:
            if isinstance(exc.__cause__, Exception):  # the user's module failed at import
                return _failed_at_import(exc.__cause__, answer)
            print(str(exc), file=sys.stderr)
            answer.write(json.dumps({"error": str(exc)}) + "\n")
            return 2
        except Exception as exc:  # noqa: BLE001 - the user's module failed at import: say so
            return _failed_at_import(exc, answer)
        described["refused"] = _refusal(sys.argv[1], described)
        answer.write(json.dumps(described) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
