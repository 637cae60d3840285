"""Built-in handlers: the reference flow from the original walkthrough, and small demos."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .context import TaskContext
from .errors import TaskFailed


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
