"""Starting one call of a handler in the right place, through the app's middleware.

Async handlers run on the event loop. Sync handlers run in a thread pool (default) or in
handler processes (procpool.py), so the loop keeps polling and heartbeating while they block
or burn CPU. Middleware always runs on the event loop, around the call.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from ...aio import retrieve_exception
from ...app import CallNext, Handler, Middleware, import_path, is_async_handler
from ...context import TaskContext
from ...errors import HandlerExited
from ...settings import HandlerMode
from .cpus import available_cpus
from .procpool import HandlerProcessPool, PoolHealth

THREAD_SWITCH_INTERVAL_SECONDS = 0.001


@dataclass(frozen=True, slots=True)
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
    """Owns where one activity's handler runs; ``start`` begins one call."""

    def __init__(
        self,
        handler: Handler,
        mode: HandlerMode,
        concurrency: int,
        *,
        middlewares: Sequence[Middleware] = (),
        process_init: Callable[[], Any] | None = None,
        max_tasks_per_child: int = 0,
        processes: int = 0,
        trace_carrier: Callable[[], dict[str, str] | None] | None = None,
        on_process_death: Callable[[], None] | None = None,
    ) -> None:
        self.handler = handler
        self.is_async = is_async_handler(handler)
        self.mode = HandlerMode.ASYNC if self.is_async else mode
        self._middlewares = tuple(middlewares)
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
            # No more processes than slots; by default one per CPU the container may use.
            # Slots beyond them hold the next tasks, heartbeated, until a process is free.
            self._processes = HandlerProcessPool(
                import_path(handler),
                max_processes=min(processes or available_cpus(), concurrency),
                init_path=import_path(process_init) if process_init is not None else None,
                max_tasks_per_child=max_tasks_per_child,
                trace_carrier=trace_carrier,
                on_death=on_process_death,
            )

    def start(self, task_input: Any, ctx: TaskContext) -> HandlerCall:
        if not self._middlewares:
            return self._start_handler(task_input, ctx)
        return self._start_chain(task_input, ctx)

    def _start_handler(self, task_input: Any, ctx: TaskContext) -> HandlerCall:
        if self._threads is not None:
            running = self._threads.submit(
                contextvars.copy_context().run, self.handler, task_input, ctx
            )
            # Two views of the thread's future: cancelling the result does not stop the
            # thread, so the second one tells when the thread is free again.
            finished = asyncio.wrap_future(running)
            finished.add_done_callback(retrieve_exception)  # its twin carries the exception
            return HandlerCall(asyncio.wrap_future(running), finished)
        if self._processes is not None:
            return HandlerCall.of(asyncio.ensure_future(self._processes.call(task_input, ctx)))
        if not self.is_async:
            return HandlerCall.of(_call_now(self.handler, task_input, ctx))
        return HandlerCall.of(
            asyncio.ensure_future(_on_loop(self.handler, self.is_async, task_input, ctx))
        )

    def _start_chain(self, task_input: Any, ctx: TaskContext) -> HandlerCall:
        """The middleware, outermost first, around the handler; ``finished`` waits for the
        chain and every handler call it made (a middleware may call ``call_next`` again)."""
        calls: list[HandlerCall] = []

        async def innermost(task_input: Any, ctx: TaskContext) -> Any:
            call = self._start_handler(task_input, ctx)
            calls.append(call)
            return await call.result

        chain: CallNext = innermost
        for middleware in reversed(self._middlewares):
            chain = _link(middleware, chain)
        result = asyncio.ensure_future(_on_loop(chain, True, task_input, ctx))
        finished: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def settle(_: object = None) -> None:
            waiting = [f for f in (result, *(c.finished for c in calls)) if not f.done()]
            if waiting:
                waiting[0].add_done_callback(settle)
            elif not finished.done():
                finished.set_result(None)

        result.add_done_callback(settle)
        return HandlerCall(result, finished)

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

    async def aclose(self, deadline: float | None = None) -> None:
        """Stop accepting calls; end handler processes (idle ones may export their last
        spans until ``deadline``, loop time). Threads that still run are left to the
        interpreter's exit (their tokens are answered: see cli)."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            await self._processes.close(deadline)


def _link(middleware: Middleware, call_next: CallNext) -> CallNext:
    async def step(task_input: Any, ctx: TaskContext) -> Any:
        return await middleware(task_input, ctx, call_next)

    return step


def _call_now(function: Handler, task_input: Any, ctx: TaskContext) -> asyncio.Future[Any]:
    """A sync handler on the loop (mode ``async``): called at once, in the task's own
    asyncio task; no task of its own to schedule."""
    result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    try:
        result.set_result(function(task_input, ctx))
    except asyncio.CancelledError:
        result.cancel()
    except (SystemExit, KeyboardInterrupt) as exc:
        # Left alone, these two leave the event loop and end the whole process.
        result.set_exception(HandlerExited(exc))
    # GeneratorExit is no Exception either; uncaught here it would end the task group (an
    # async handler's task, a thread or a process keep it to the call).
    except (Exception, GeneratorExit) as exc:  # noqa: BLE001 - the failure is the task's answer
        result.set_exception(exc)
    return result


async def _on_loop(
    function: Callable[[Any, TaskContext], Any], is_async: bool, task_input: Any, ctx: TaskContext
) -> Any:
    try:
        result = function(task_input, ctx)
        if is_async:
            result = await cast(Awaitable[Any], result)
        return result
    except (SystemExit, KeyboardInterrupt) as exc:
        # Left alone, these two leave the event loop and end the whole process.
        raise HandlerExited(exc) from None
