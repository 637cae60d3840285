"""Loading the user's handler and starting one call of it in the right place.

Async handlers run on the event loop. Sync handlers run in a thread pool (default) or a
process pool, so the loop keeps polling and heartbeating while they block or burn CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import functools
import importlib
import inspect
import multiprocessing
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, cast

from .context import TaskContext
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


# Process mode: each child imports the handler once, by its path.
_process_handler: Handler | None = None


def _init_process(path: str) -> None:
    _die_with_parent()
    global _process_handler
    _process_handler = load_handler(path)


def _die_with_parent() -> None:
    # Linux: if the worker is SIGKILLed, its handler processes go too instead of idling on.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG


def _call_in_process(task_input: Any, task_token: str, worker_name: str, activity_arn: str) -> Any:
    assert _process_handler is not None, "process pool initialiser did not run"
    ctx = TaskContext(task_token=task_token, worker_name=worker_name, activity_arn=activity_arn)
    return _process_handler(task_input, ctx)


class HandlerInvoker:
    """Owns the pools sync handlers run in; ``start`` begins one call and returns its future."""

    def __init__(self, handler: Handler, mode: HandlerMode, concurrency: int) -> None:
        self.handler = handler
        self.is_async = is_async_handler(handler)
        self.mode = HandlerMode.ASYNC if self.is_async else mode
        self._executor: Executor | None = None
        if self.mode is HandlerMode.THREAD:
            # CPU-bound handler threads hold the GIL for a whole switch interval each time;
            # the event loop needs it dozens of times per heartbeat. A shorter interval keeps
            # heartbeats on time (measured in bench/: p99 lag from seconds to well under 1 s).
            sys.setswitchinterval(min(sys.getswitchinterval(), THREAD_SWITCH_INTERVAL_SECONDS))
            self._executor = ThreadPoolExecutor(
                max_workers=concurrency, thread_name_prefix="sfn-handler"
            )
        elif self.mode is HandlerMode.PROCESS:
            # spawn: forking a process that runs an event loop and threads is unsafe.
            self._executor = ProcessPoolExecutor(
                max_workers=min(concurrency, os.cpu_count() or 1),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_process,
                initargs=(import_path(handler),),
            )

    def start(self, task_input: Any, ctx: TaskContext) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if self.is_async:
            coroutine = cast(Awaitable[Any], self.handler(task_input, ctx))
            return asyncio.ensure_future(coroutine)
        if self.mode is HandlerMode.THREAD:
            call = functools.partial(contextvars.copy_context().run, self.handler, task_input, ctx)
            return loop.run_in_executor(self._executor, call)
        if self.mode is HandlerMode.PROCESS:
            return loop.run_in_executor(
                self._executor,
                _call_in_process,
                task_input,
                ctx.task_token,
                ctx.worker_name,
                ctx.activity_arn,
            )
        return asyncio.ensure_future(self._call_inline(task_input, ctx))

    async def _call_inline(self, task_input: Any, ctx: TaskContext) -> Any:
        # HandlerMode.ASYNC with a sync handler: the caller chose to run it on the loop.
        return self.handler(task_input, ctx)

    def close(self, *, wait: bool) -> None:
        if self._executor is None:
            return
        if not wait and isinstance(self._executor, ProcessPoolExecutor):
            # Their tokens are answered; do not leave handler processes running on their own.
            for process in list(getattr(self._executor, "_processes", {}).values()):
                process.terminate()
        self._executor.shutdown(wait=wait, cancel_futures=True)
