"""What a handler gets besides its input."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Protocol

# ctx.state when the app has no lifespan: an empty, read-only mapping.
NO_STATE: Any = types.MappingProxyType({})
# ctx.state in a handler process of an app without @app.process_init.
STATE_UNAVAILABLE: Any = object()
STATE_UNAVAILABLE_MESSAGE = (
    "ctx.state is not available in process mode: the lifespan's resources live in the "
    "worker's process. Register an @app.process_init function; what it returns is ctx.state "
    "in each handler process."
)


def token_hash(task_token: str) -> str:
    """A short, stable name for a token that is safe to log (tokens are bearer secrets)."""
    return hashlib.sha256(task_token.encode()).hexdigest()[:12]


class Flag:
    """A ``threading.Event`` (same methods) that allocates its lock and condition only when
    someone waits on it: every task has one, few handlers ever block on it."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        with _FLAG_LOCK:
            event = self._event
        if event is not None:
            event.set()

    def clear(self) -> None:
        with _FLAG_LOCK:
            self._set = False
            if self._event is not None:
                self._event.clear()

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        with _FLAG_LOCK:
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        # set() may have run between the check above and the event's creation.
        if self._set:
            event.set()
        return event.wait(timeout)


_FLAG_LOCK = threading.Lock()


class ProgressSink(Protocol):
    """Where ``ctx.heartbeat()`` reports: the worker's record of the task, or the pipe of a
    handler process."""

    def report_progress(self) -> None: ...

    def handler_started(self) -> None:
        """The handler itself starts now (in process mode, once its process is up): the
        progress clock of SFN_HEARTBEAT_MODE=progress starts here."""
        ...


class StateUnavailable(RuntimeError):
    """``ctx.state`` used where there is none (process mode without @app.process_init)."""


@dataclass(eq=False, slots=True)
class TaskContext:
    """Passed to every handler as its second argument.

    ``cancel_requested`` is set when the worker wants the handler to stop (the task timed out
    at Step Functions, or the shutdown grace ran out). Async handlers also get CancelledError;
    sync handlers cannot be interrupted and should check it between steps.

    ``shutdown_requested`` is set as soon as the worker is asked to stop, so a long job can
    save progress and finish (or raise) before the grace period ends.

    ``state`` is what the app's lifespan yielded (process mode: what ``@app.process_init``
    returned in that process).
    """

    task_token: str = field(repr=False)
    worker_name: str
    activity_arn: str = ""  # the task's activity ("" for a callback queue's task)
    token_hash: str = ""
    queue_url: str = ""  # the callback queue that carried the task ("" for an activity's)
    source_name: str = ""  # the activity's or the queue's name
    cancel_requested: Flag | threading.Event = field(default_factory=Flag, repr=False)
    # Usually one event that every task of the worker shares.
    shutdown_requested: Flag | threading.Event = field(default_factory=Flag, repr=False)
    _stopping: asyncio.Event | None = field(default=None, repr=False)
    _state: Any = field(default_factory=lambda: NO_STATE, repr=False)
    _progress: ProgressSink | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.token_hash:
            self.token_hash = token_hash(self.task_token)
        if not self.source_name:
            self.source_name = (self.activity_arn or self.queue_url).rsplit(":", 1)[-1]
            self.source_name = self.source_name.rstrip("/").rsplit("/", 1)[-1]

    @property
    def state(self) -> Any:
        if self._state is STATE_UNAVAILABLE:
            raise StateUnavailable(STATE_UNAVAILABLE_MESSAGE)
        return self._state

    def heartbeat(self) -> None:
        """Report progress. Cheap and thread-safe, from any handler mode: it only records
        that the handler is alive; the worker decides when to send a heartbeat. With
        SFN_HEARTBEAT_MODE=progress a task is heartbeated only while its handler calls this
        at least once per SFN_HEARTBEAT_SECONDS."""
        if self._progress is not None:
            self._progress.report_progress()

    async def wait_for_shutdown(self) -> None:
        """For async handlers: returns once the worker has been asked to stop."""
        if self._stopping is None:
            await asyncio.Event().wait()
        else:
            await self._stopping.wait()
