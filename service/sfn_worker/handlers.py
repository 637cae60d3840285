"""Loading the user's handler and starting one call of it in the right place.

Async handlers run on the event loop. Sync handlers run in a thread pool (default) or in
handler processes (procpool.py), so the loop keeps polling and heartbeating while they block
or burn CPU.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from .context import TaskContext
from .errors import HandlerExited
from .procpool import HandlerProcessPool, PoolHealth
from .settings import HandlerMode

Handler = Callable[[Any, TaskContext], Any]

THREAD_SWITCH_INTERVAL_SECONDS = 0.001


class HandlerLoadError(Exception):
    """SFN_HANDLER does not name an importable callable."""


def load_handler(path: str) -> Handler:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerLoadError(
            f"SFN_HANDLER={path!r}: cannot import {module_name!r}: {exc}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerLoadError(
                f"SFN_HANDLER={path!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise HandlerLoadError(f"SFN_HANDLER={path!r} is not callable")
    return cast(Handler, target)


def import_path(handler: Handler) -> str:
    """``module:qualname`` of a handler: how a spawned process finds it again."""
    module = getattr(handler, "__module__", "?")
    name = getattr(handler, "__qualname__", type(handler).__qualname__)
    return f"{module}:{name}"


def is_async_handler(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
    )


@dataclass(frozen=True)
class HandlerCall:
    """One call of a handler. ``result`` holds what it returned or raised; cancelling it asks
    the handler to stop. ``finished`` is done only once the handler really stopped: a thread
    cannot be interrupted, and an async handler can ignore cancellation."""

    result: asyncio.Future[Any]
    finished: asyncio.Future[Any]

    @classmethod
    def of(cls, task: asyncio.Future[Any]) -> HandlerCall:
        return cls(task, task)


class HandlerInvoker:
    """Owns where handlers run; ``start`` begins one call."""

    def __init__(
        self,
        handler: Handler,
        mode: HandlerMode,
        concurrency: int,
        *,
        on_process_death: Callable[[], None] | None = None,
    ) -> None:
        self.handler = handler
        self.is_async = is_async_handler(handler)
        self.mode = HandlerMode.ASYNC if self.is_async else mode
        self._threads: ThreadPoolExecutor | None = None
        self._processes: HandlerProcessPool | None = None
        if self.mode is HandlerMode.THREAD:
            # CPU-bound handler threads hold the GIL for a whole switch interval each time;
            # the event loop needs it dozens of times per heartbeat. A shorter interval keeps
            # heartbeats on time (measured in bench/: p99 lag from seconds to well under 1 s).
            sys.setswitchinterval(min(sys.getswitchinterval(), THREAD_SWITCH_INTERVAL_SECONDS))
            # One thread per slot: a slot is held until its handler's thread is free again,
            # so a task that has a slot never waits for a thread.
            self._threads = ThreadPoolExecutor(
                max_workers=concurrency, thread_name_prefix="sfn-handler"
            )
        elif self.mode is HandlerMode.PROCESS:
            self._processes = HandlerProcessPool(import_path(handler), on_death=on_process_death)

    def start(self, task_input: Any, ctx: TaskContext) -> HandlerCall:
        if self._threads is not None:
            running = self._threads.submit(
                contextvars.copy_context().run, self.handler, task_input, ctx
            )
            # Two views of the thread's future: cancelling the result does not stop the
            # thread, so the second one tells when the thread is free again.
            return HandlerCall(asyncio.wrap_future(running), asyncio.wrap_future(running))
        if self._processes is not None:
            return HandlerCall.of(asyncio.ensure_future(self._processes.call(task_input, ctx)))
        return HandlerCall.of(asyncio.ensure_future(self._call_on_loop(task_input, ctx)))

    async def _call_on_loop(self, task_input: Any, ctx: TaskContext) -> Any:
        try:
            result = self.handler(task_input, ctx)
            if self.is_async:
                result = await cast(Awaitable[Any], result)
            return result
        except (SystemExit, KeyboardInterrupt) as exc:
            # Left alone, these two leave the event loop and end the whole process.
            raise HandlerExited(exc) from None

    async def wait_ready(self) -> None:
        """Returns when a new call could start at once (process mode may be backing off)."""
        if self._processes is not None:
            await self._processes.wait_ready()

    def process_health(self) -> PoolHealth | None:
        return self._processes.health() if self._processes is not None else None

    def notify_shutdown(self) -> None:
        """Handlers in other processes see ``ctx.shutdown_requested`` too."""
        if self._processes is not None:
            self._processes.notify_shutdown()

    async def aclose(self) -> None:
        """Stop accepting calls; end handler processes. Threads that still run are left to
        the interpreter's exit (their tokens are answered: see cli)."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            await self._processes.close()
