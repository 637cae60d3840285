"""Built-in handlers: the reference flow from the original walkthrough, small demos, and an
example app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog

from .app import App, CallNext, non_blocking
from .context import TaskContext
from .exceptions import TaskFailed

log = structlog.get_logger("sfn_worker.examples")


@non_blocking  # a dict lookup: runs on the event loop, no thread hand-off
def seed_handler(task_input: Any, ctx: TaskContext) -> Any:
    """``{"in": "SUCCESS"}`` succeeds with ``{"result": <input>}``; anything else fails."""
    if isinstance(task_input, dict) and task_input.get("in") == "SUCCESS":
        return {"result": task_input}
    raise TaskFailed("NO_SUCCESS_INPUT", 'Input is not "SUCCESS"')


def blocking_sleep_handler(task_input: Any, ctx: TaskContext) -> Any:
    """Blocks its thread for ``input["seconds"]``, ignoring cancellation: a stubborn job."""
    seconds = float(task_input.get("seconds", 1)) if isinstance(task_input, dict) else 1.0
    time.sleep(seconds)
    return {"slept": seconds}


async def sleep_handler(task_input: Any, ctx: TaskContext) -> Any:
    """Sleeps ``input["seconds"]`` then echoes the input: a stand-in for a long job."""
    seconds = float(task_input.get("seconds", 1)) if isinstance(task_input, dict) else 1.0
    await asyncio.sleep(seconds)
    return {"slept": seconds, "input": task_input}


# An app: the seed activity and a second one, the seed flow over an SQS callback queue, a
# lifespan and a middleware (`make demo` runs it with `sfn-worker run sfn_worker.examples:app`
# and points the queue at LocalStack with SFN_SEED_CALLBACKS_QUEUE_URL).
app = App()


@app.lifespan
async def started(app: App) -> AsyncIterator[dict[str, Any]]:
    yield {"worker_started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


app.activity("seed-activity")(seed_handler)
app.callback_queue("https://sqs.us-east-1.amazonaws.com/000000000000/seed-callbacks")(seed_handler)


@app.activity("uppercase", concurrency=4)
async def uppercase(task_input: Any, ctx: TaskContext) -> Any:
    """``{"text": "hi"}`` -> ``{"text": "HI", "worker_started": <from the lifespan>}``."""
    text = task_input.get("text", "") if isinstance(task_input, dict) else ""
    return {"text": str(text).upper(), "worker_started": ctx.state["worker_started"]}


@app.middleware
async def timed(task_input: Any, ctx: TaskContext, call_next: CallNext) -> Any:
    started_at = time.monotonic()
    try:
        return await call_next(task_input, ctx)
    finally:
        log.debug("handler call timed", seconds=round(time.monotonic() - started_at, 4))
