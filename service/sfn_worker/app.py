"""``App``: several activities in one process, a lifespan for shared resources, middleware.

    app = App()

    @app.lifespan
    async def resources(app):          # entered before the first poll, exited after the last answer
        async with aiohttp.ClientSession() as http:
            yield {"http": http}       # handlers see it as ctx.state

    @app.activity("notify", concurrency=200)
    async def notify(task_input, ctx): ...

    @app.middleware
    async def audit(task_input, ctx, call_next):
        return await call_next(task_input, ctx)

    @app.callback_queue("https://sqs.eu-west-1.amazonaws.com/123456789012/render-jobs")
    async def render(task_input, ctx): ...   # tokens from .waitForTaskToken states, over SQS

Run it with ``sfn-worker run module:app``. The single-source form (SFN_ACTIVITY_ARN and/or
SFN_SQS_QUEUE_URL, with SFN_HANDLER) is an app of those (``App.single``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from .context import TaskContext
from .exceptions import SfnWorkerError
from .settings import HandlerMode, HeartbeatMode

Handler = Callable[[Any, TaskContext], Any]
CallNext = Callable[[Any, TaskContext], Awaitable[Any]]
Middleware = Callable[[Any, TaskContext, CallNext], Awaitable[Any]]
Lifespan = Callable[["App"], AbstractAsyncContextManager[Any]]
H = TypeVar("H", bound=Handler)
F = TypeVar("F", bound=Callable[..., Any])


class LoadError(SfnWorkerError):
    """An app or handler path does not name what it should; the message says which."""


@dataclass(frozen=True)
class Registration:
    """A task source as the code registered it: an activity (ARN or name) or a callback
    queue (URL), its handler, and the options given in code."""

    kind: str  # "activity" | "queue"
    ref: str
    handler: Handler
    options: dict[str, Any] = field(default_factory=dict)


class App:
    """Collects activities, a lifespan, middleware and a per-process initialiser."""

    def __init__(self) -> None:
        self.single_form = False  # built from SFN_ACTIVITY_ARN / SFN_SQS_QUEUE_URL + SFN_HANDLER
        self.activities: list[Registration] = []
        self.queues: list[Registration] = []
        self.middlewares: list[Middleware] = []
        self.lifespan_factory: Lifespan | None = None
        self.process_initializer: Callable[[], Any] | None = None

    @classmethod
    def single(
        cls, handler: Handler, *, activity_arn: str | None = None, queue_url: str | None = None
    ) -> App:
        """The single-source form: one handler for the activity and/or the queue; settings
        come from SFN_* alone."""
        app = cls()
        app.single_form = True
        if activity_arn is not None:
            app.activities.append(Registration("activity", activity_arn, handler))
        if queue_url is not None:
            app.queues.append(Registration("queue", queue_url, handler))
        return app

    def activity(
        self,
        arn_or_name: str,
        *,
        concurrency: int | None = None,
        pollers: int | None = None,
        queue_size: int | None = None,
        heartbeat_seconds: float | None = None,
        heartbeat_mode: HeartbeatMode | str | None = None,
        handler_mode: HandlerMode | str | None = None,
        max_tasks_per_child: int | None = None,
        processes: int | None = None,
    ) -> Callable[[H], H]:
        """Register a handler for an activity, by ARN or by name (resolved at start)."""
        given = {
            "concurrency": concurrency,
            "pollers": pollers,
            "queue_size": queue_size,
            "heartbeat_seconds": heartbeat_seconds,
            "heartbeat_mode": heartbeat_mode,
            "handler_mode": handler_mode,
            "max_tasks_per_child": max_tasks_per_child,
            "processes": processes,
        }
        return self._registering(self.activities, "activity", arn_or_name, given)

    def callback_queue(
        self,
        queue_url: str,
        *,
        concurrency: int | None = None,
        pollers: int | None = None,
        queue_size: int | None = None,
        heartbeat_seconds: float | None = None,
        heartbeat_mode: HeartbeatMode | str | None = None,
        handler_mode: HandlerMode | str | None = None,
        max_tasks_per_child: int | None = None,
        processes: int | None = None,
        visibility_seconds: int | None = None,
        on_shutdown: str | None = None,
        token_field: str | None = None,
        input_field: str | None = None,
    ) -> Callable[[H], H]:
        """Register a handler for the task tokens an SQS queue carries (states using
        ``arn:aws:states:::sqs:sendMessage.waitForTaskToken``)."""
        given = {
            "concurrency": concurrency,
            "pollers": pollers,
            "queue_size": queue_size,
            "heartbeat_seconds": heartbeat_seconds,
            "heartbeat_mode": heartbeat_mode,
            "handler_mode": handler_mode,
            "max_tasks_per_child": max_tasks_per_child,
            "processes": processes,
            "visibility_seconds": visibility_seconds,
            "on_shutdown": on_shutdown,
            "token_field": token_field,
            "input_field": input_field,
        }
        return self._registering(self.queues, "queue", queue_url, given)

    @staticmethod
    def _registering(
        into: list[Registration], kind: str, ref: str, given: dict[str, Any]
    ) -> Callable[[H], H]:
        """The decorator that registers a handler with the options given (None: not given)."""
        options = {name: value for name, value in given.items() if value is not None}

        def register(handler: H) -> H:
            into.append(Registration(kind, ref, handler, options))
            return handler

        return register

    def lifespan(self, function: Callable[[App], AsyncIterator[Any]]) -> Callable[..., Any]:
        """An async generator: what it yields is ``ctx.state``; it is closed after the last
        token is answered."""
        if not inspect.isasyncgenfunction(function):
            raise TypeError("@app.lifespan takes an async generator function (async def ... yield)")
        self.lifespan_factory = contextlib.asynccontextmanager(function)
        return function

    def middleware(self, function: F) -> F:
        """``async def mw(task_input, ctx, call_next)``: runs on the event loop around every
        handler call, outermost (first registered) first."""
        if not inspect.iscoroutinefunction(function):
            raise TypeError("@app.middleware takes an async function (task_input, ctx, call_next)")
        self.middlewares.append(function)
        return function

    def process_init(self, function: F) -> F:
        """Process mode: runs once in each handler process; its return value is ``ctx.state``
        there. Must be importable as module:function, like the handlers."""
        self.process_initializer = function
        return function


def importable_from_cwd() -> None:
    """Put the current directory on ``sys.path``, last: the console script's own directory
    is first instead, so ``sfn-worker run media.worker:app`` from the folder holding
    ``media/`` could not import it. Last, after the standard library and the installed
    packages, so a module of the user's named like one of them (``json.py``, ``signal.py``,
    ``uvloop.py``) never replaces what the worker imports later (uvloop when the loop
    starts, stringprep at the first request, everything in a handler process). Spawned
    handler processes inherit it (multiprocessing passes ``sys.path``). Not with
    ``python -P`` / PYTHONSAFEPATH, which asks for exactly that not to happen."""
    if sys.flags.safe_path:
        return
    cwd = os.getcwd()
    # ``python -m`` put it first ('' or the path): moved, as the console script has it.
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != cwd]
    sys.path.append(cwd)
    importlib.invalidate_caches()


def import_object(path: str, what: str) -> Any:
    """The object ``module:attribute`` names; LoadError naming ``what`` otherwise."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoadError(f"{what}={path!r}: cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        # The user's module failed while it ran (a syntax error, an exception at import):
        # one line with the place; the exception stays the cause for who shows frames.
        raise LoadError(f"{what}={path!r}: importing {module_name!r} raised {_where(exc)}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise LoadError(
                f"{what}={path!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return target


def _where(exc: Exception) -> str:
    """``Type: message (file, line N)``: the last frame is the user's (or the syntax
    error's own place)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, SyntaxError):
        text = f"{type(exc).__name__}: {exc.msg}"
        filename, line = exc.filename, exc.lineno
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        filename, line = (frames[-1].filename, frames[-1].lineno) if frames else (None, None)
    return f"{text} ({filename}, line {line})" if filename else text


def load_handler(path: str, what: str = "SFN_HANDLER") -> Handler:
    target = import_object(path, what)
    if not callable(target):
        raise LoadError(f"{what}={path!r} is not callable")
    return cast(Handler, target)


def import_path(function: Callable[..., Any]) -> str:
    """``module:qualname`` of a function: how a spawned process finds it again."""
    module = getattr(function, "__module__", "?")
    name = getattr(function, "__qualname__", type(function).__qualname__)
    return f"{module}:{name}"


NON_BLOCKING_ATTRIBUTE = "__sfn_worker_non_blocking__"


def non_blocking(handler: H) -> H:
    """Mark a sync handler that never blocks: no I/O, no sleeps, a few microseconds of CPU.
    Unless SFN_HANDLER_MODE (or the app's registration) says otherwise, it then runs on the
    event loop (handler mode ``async``) instead of being handed to a thread, which saves
    that hand-off: a few hundred microseconds of CPU per task. A handler that does block
    stalls polls and heartbeats while it runs (the worker warns when the loop was blocked).
    """
    setattr(handler, NON_BLOCKING_ATTRIBUTE, True)
    return handler


def is_non_blocking_handler(handler: Handler) -> bool:
    return getattr(handler, NON_BLOCKING_ATTRIBUTE, False) is True


def is_async_handler(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
    )


def load_app(path: str, what: str = "SFN_APP") -> App:
    target = import_object(path, what)
    if not isinstance(target, App):
        raise LoadError(f"{what}={path!r} is a {type(target).__name__}, not an sfn_worker.App")
    if not target.activities and not target.queues:
        raise LoadError(
            f"{what}={path!r}: the app registers no activity (@app.activity) "
            "and no callback queue (@app.callback_queue)"
        )
    return target
