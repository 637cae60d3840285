"""Apps the tests run by path (``sfn-worker run tests.apps:media``; process mode imports them)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from sfn_worker import App, TaskContext

# -- media: two activities, a lifespan, a middleware, a process initialiser -----------------
media = App()


@media.lifespan
async def resources(app: App) -> AsyncIterator[dict[str, Any]]:
    yield {"greeting": "hello from the lifespan"}


@media.process_init
def per_process() -> dict[str, Any]:
    return {"pid": os.getpid()}


@media.activity("render", concurrency=2, handler_mode="process")
def render(task_input: Any, ctx: TaskContext) -> Any:
    time.sleep(task_input.get("seconds", 0))
    return {"rendered": task_input.get("name"), "pid": ctx.state["pid"]}


@media.activity("notify", concurrency=3)
async def notify(task_input: Any, ctx: TaskContext) -> Any:
    await asyncio.sleep(task_input.get("seconds", 0))
    return {"notified": task_input.get("name"), "greeting": ctx.state["greeting"]}


@media.middleware
async def tag(task_input: Any, ctx: TaskContext, call_next: Any) -> Any:
    result = await call_next(task_input, ctx)
    return {**result, "activity": ctx.source_name}


# -- broken lifespans -------------------------------------------------------------------------
fails_on_entry = App()


@fails_on_entry.lifespan
async def no_database(app: App) -> AsyncIterator[None]:
    raise ConnectionError("database unreachable")
    yield  # pragma: no cover


@fails_on_entry.activity("render")
async def never_runs(task_input: Any, ctx: TaskContext) -> Any:  # pragma: no cover
    raise AssertionError("no task may run when the lifespan failed")


fails_on_exit = App()


@fails_on_exit.lifespan
async def breaks_when_closed(app: App) -> AsyncIterator[None]:
    yield
    raise RuntimeError("could not close the pool")


@fails_on_exit.activity("render")
async def quick(task_input: Any, ctx: TaskContext) -> Any:
    return {"ok": True}


# -- process mode without a process initialiser ----------------------------------------------
no_process_state = App()


@no_process_state.activity("render", handler_mode="process")
def reads_state(task_input: Any, ctx: TaskContext) -> Any:
    return ctx.state


# -- two callback queues (for configuration checks) ----------------------------------------
two_queues = App()


@two_queues.callback_queue("https://sqs.us-east-1.amazonaws.com/123456789012/first")
async def first(task_input: Any, ctx: TaskContext) -> Any:  # pragma: no cover
    return task_input


@two_queues.callback_queue("https://sqs.us-east-1.amazonaws.com/123456789012/second")
async def second(task_input: Any, ctx: TaskContext) -> Any:  # pragma: no cover
    return task_input


# -- lifespans that hang (hostile: hooks) --------------------------------------------------
def _say(event: str) -> None:
    import structlog

    structlog.get_logger("tests.apps").info(event)


never_yields = App()


@never_yields.lifespan
async def waits_for_ever(app: App) -> AsyncIterator[None]:
    _say("lifespan entering")
    await asyncio.Event().wait()
    yield  # pragma: no cover


@never_yields.activity("render")
async def never_polled(task_input: Any, ctx: TaskContext) -> Any:  # pragma: no cover
    raise AssertionError("no task may run when the lifespan never started")


stubborn_entry = App()


@stubborn_entry.lifespan
async def ignores_cancellation(app: App) -> AsyncIterator[None]:
    _say("lifespan entering")
    while True:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            continue  # a broken library: it swallows cancellation
    yield  # pragma: no cover


stubborn_entry.activity("render")(never_polled)


slow_start = App()


@slow_start.lifespan
async def starts_slowly(app: App) -> AsyncIterator[None]:
    _say("lifespan entering")
    await asyncio.sleep(3)
    yield


slow_start.activity("render")(never_polled)


hangs_on_exit = App()


@hangs_on_exit.lifespan
async def never_closes(app: App) -> AsyncIterator[None]:
    yield
    _say("lifespan exiting")
    await asyncio.Event().wait()


@hangs_on_exit.activity("render")
async def answers(task_input: Any, ctx: TaskContext) -> Any:
    return {"ok": True}
