"""Handlers with a dependency of their own (humanize), run by the stock worker."""

from __future__ import annotations

from typing import Any

import humanize

from sfn_worker import TaskContext, TaskFailed


def describe_file(task_input: Any, ctx: TaskContext) -> Any:
    """``{"name": "a.mp4", "bytes": 1048576}`` -> ``{"name": "a.mp4", "size": "1.0 MiB"}``."""
    if not isinstance(task_input, dict) or not isinstance(task_input.get("bytes"), int):
        raise TaskFailed("Media.BadInput", 'expected {"name": ..., "bytes": <integer>}')
    ctx.heartbeat()  # progress, for SFN_HEARTBEAT_MODE=progress
    return {
        "name": task_input.get("name", ""),
        "size": humanize.naturalsize(task_input["bytes"], binary=True),
    }
