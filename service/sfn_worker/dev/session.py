"""A dev session's state file (how ``sfn-worker dev start`` in another shell finds it) and
the ``export`` lines that point another shell at it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from .kinds import SINGLE_VARIABLE, dev_kind
from .resources import REGION, Created

DIRECTORY = ".sfn-worker-dev"
FILE = "session.json"
LOCK = "lock"  # held by the running session for its whole life
SESSION_VARIABLE = "SFN_DEV_SESSION"  # set by the export lines; else ./.sfn-worker-dev/


class SessionError(Exception):
    """No usable session; the message says what to run."""


@dataclass
class SourceRecord:
    kind: str
    name: str
    key: str
    address: str
    machine_arn: str


@dataclass
class Session:
    pid: int
    endpoint_url: str
    port: int
    region: str = REGION
    target: str = ""
    sources: list[SourceRecord] = field(default_factory=list)
    # What `dev start` tells its user while an execution waits: "starting", "running",
    # "restarting" or "waiting" (for a change: ``reason`` says why no worker runs).
    worker: str = "starting"
    reason: str = ""

    def worker_note(self) -> str | None:
        """What `dev start` says of a worker that does not run (None: it runs)."""
        if self.worker == "running":
            return None
        if self.worker == "waiting":
            why = f": {self.reason}" if self.reason else ""
            return (
                f"the dev worker is not running (waiting for a change{why}); "
                "the execution waits for it"
            )
        return f"the dev worker is {self.worker}; the execution waits for it"

    def record(self, created: list[Created]) -> None:
        self.sources = [
            SourceRecord(c.source.kind, c.source.name, c.source.key, c.address, c.machine_arn)
            for c in created
        ]


def default_path(project: Path) -> Path:
    return project / DIRECTORY / FILE


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(path: Path) -> Session:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise SessionError(
            f"no dev session at {path}: start one with `sfn-worker dev module:handler` in this "
            f"directory, or export the lines it printed ({SESSION_VARIABLE})"
        ) from None
    except (OSError, ValueError) as exc:
        raise SessionError(f"cannot read the dev session {path}: {exc}") from None
    try:
        sources = [SourceRecord(**source) for source in data.pop("sources", [])]
        return Session(**data, sources=sources)
    except (TypeError, AttributeError) as exc:  # another version's file, or not ours
        raise SessionError(f"cannot read the dev session {path}: {exc}") from None


def _held(lock_path: Path) -> bool:
    """Whether a live session holds the directory's lock (released by the kernel when its
    process ends, even killed: unlike a pid, never reused)."""
    try:
        with open(lock_path) as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return True  # a session from before the lock: its pid alone says
    except BlockingIOError:
        return True
    return False


def _running(path: Path) -> Session:
    session = read(path)
    if not alive(session.pid) or not _held(path.parent / LOCK):
        raise SessionError(
            f"the dev session in {path} has ended (pid {session.pid} no longer runs it)"
        )
    return session


def find(project: Path, environ: dict[str, str]) -> tuple[Path, Session, str | None]:
    """The session `dev start` uses, and a note when it is not the one SFN_DEV_SESSION names:
    a session running in the current folder beats the variable (export lines pasted from
    another session are easily left in a shell)."""
    here = default_path(project)
    named = environ.get(SESSION_VARIABLE)
    if named and Path(named).resolve() != here.resolve():
        with contextlib.suppress(SessionError):
            session = _running(here)
            note = (
                f"using the session running in this folder ({here}), not the one "
                f"{SESSION_VARIABLE} names ({named})"
            )
            return here, session, note
        return Path(named), _running(Path(named)), None
    return here, _running(here), None


def claim(path: Path) -> IO[str]:
    """The directory's lock, held for the session's life (close it at the end): a second
    `sfn-worker dev` here is refused from its first instant, not only once the first one's
    LocalStack is up; a stale session file (its process killed) is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Never committed by mistake: the directory ignores itself, as .mypy_cache does.
    (path.parent / ".gitignore").write_text("*\n")
    locked_before = (path.parent / LOCK).exists()
    lock = open(path.parent / LOCK, "a")  # noqa: SIM115 - returned, closed by the caller
    other: Session | None = None
    with contextlib.suppress(SessionError):
        other = read(path)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        which = (
            f"pid {other.pid}, LocalStack at {other.endpoint_url}"
            if other is not None and alive(other.pid)
            else "still starting"
        )
        raise _another(which) from None
    if not locked_before and other is not None and other.pid != os.getpid() and alive(other.pid):
        # A session of a version without the lock: its live pid is all there is to go by.
        lock.close()
        raise _another(f"pid {other.pid}, LocalStack at {other.endpoint_url}")
    return lock


def _another(which: str) -> SessionError:
    return SessionError(
        f"another `sfn-worker dev` ({which}) runs from this directory: stop it first "
        "(Ctrl-C in its shell), or run this one from another directory"
    )


def write(path: Path, session: Session) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(session), indent=2) + "\n")
    partial.replace(path)  # a reader never sees half a file


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def export_lines(session: Session, path: Path) -> list[str]:
    """What another shell needs to reach this session's LocalStack and sources."""
    url = session.endpoint_url
    values = {
        "AWS_ENDPOINT_URL_SFN": url,
        "AWS_ENDPOINT_URL_SQS": url,
        "AWS_ENDPOINT_URL_STS": url,
        "AWS_REGION": session.region,
        "AWS_DEFAULT_REGION": session.region,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        SESSION_VARIABLE: str(path),
    }
    single = any(not source.key for source in session.sources)
    values["SFN_HANDLER" if single else "SFN_APP"] = session.target
    for source in session.sources:
        if not source.key:  # the single form
            values[SINGLE_VARIABLE] = source.address
            values["SFN_DEV_MACHINE_ARN"] = source.machine_arn
        else:
            values[f"SFN_{source.key}_{dev_kind(source.kind).suffix}"] = source.address
            values[f"SFN_DEV_{source.key}_MACHINE_ARN"] = source.machine_arn
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
