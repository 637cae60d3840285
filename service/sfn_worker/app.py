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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar, Unpack, cast

from . import source_options
from .context import TaskContext
from .exceptions import SfnWorkerError
from .source_options import ActivityKeywords, QueueKeywords

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

    def activity(self, arn_or_name: str, **options: Unpack[ActivityKeywords]) -> Callable[[H], H]:
        """Register a handler for an activity, by ARN or by name (resolved at start). The
        keywords are its settings (source_options.ActivityOptions; None: not given)."""
        return self._registering(self.activities, "activity", arn_or_name, options)

    def callback_queue(self, queue_url: str, **options: Unpack[QueueKeywords]) -> Callable[[H], H]:
        """Register a handler for the task tokens an SQS queue carries (states using
        ``arn:aws:states:::sqs:sendMessage.waitForTaskToken``). The keywords are its
        settings (source_options.QueueOptions; None: not given)."""
        return self._registering(self.queues, "queue", queue_url, options)

    @staticmethod
    def _registering(
        into: list[Registration], kind: str, ref: str, given: Mapping[str, Any]
    ) -> Callable[[H], H]:
        """The decorator that registers a handler with the options given (None: not given).
        A keyword that is no setting of the kind is refused here, as Python refuses one."""
        model = source_options.KINDS[kind]
        known = [name for name, _ in source_options.options(model)]
        method = "activity" if kind == "activity" else "callback_queue"
        for name, value in given.items():
            if name not in known:
                raise TypeError(
                    f"App.{method}() got an unexpected keyword argument {name!r} "
                    f"(its settings: {', '.join(known)})"
                )
            # A bool is an int to Python and type checkers: concurrency=True ran one slot.
            wanted = model.model_fields[name].annotation
            if isinstance(value, bool) and wanted is not bool:
                kind_name = getattr(wanted, "__name__", str(wanted))
                raise TypeError(f"App.{method}() keyword {name!r} takes {kind_name}, not {value}")
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


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _where(exc: Exception) -> str:
    """``Type: message (file, line N)``: the last frame is the user's (or the syntax
    error's own place)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, SyntaxError):
        text = f"{type(exc).__name__}: {exc.msg}"
        filename, line = exc.filename, exc.lineno
    else:
        # The user's last frame: a TypeError App.activity raises names the line calling it.
        frames = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if not frame.filename.startswith(_PACKAGE)
        ] or traceback.extract_tb(exc.__traceback__)
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
