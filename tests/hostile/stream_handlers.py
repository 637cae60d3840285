"""Handlers for the output-channel cases, importable by path by a worker subprocess."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from sfn_worker import TaskContext, TaskFailed

# 100 KB of text that is not one token-like run (words and spaces): it must be cut, not
# redacted away.
HUGE_TEXT = "lorem ipsum dolor sit amet " * 3_800


def fail_with_error(task_input: Any, ctx: TaskContext) -> Any:
    """Fails with the error name the input gives (non-ASCII, blank: the README allows it)."""
    raise TaskFailed(task_input["error"], "named by the input")


async def leak_an_exception(task_input: Any, ctx: TaskContext) -> Any:
    """Starts a task that fails with the token and 100 KB in its message and drops it
    unretrieved: asyncio logs "Task exception was never retrieved" through the standard
    library, with the message and the traceback."""

    async def fail() -> None:
        raise RuntimeError(f"gave up on {ctx.task_token}: {HUGE_TEXT}")

    task = asyncio.ensure_future(fail())
    await asyncio.sleep(0.01)
    del task
    gc.collect()
    return {"leaked": True}
