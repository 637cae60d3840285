"""Small asyncio helpers shared by the worker's parts."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for it to finish, without hiding our own cancellation."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


def retrieve_exception(future: asyncio.Future[Any]) -> None:
    """Done callback: mark a future's exception as seen. A handler may fail after nobody
    waits for it (abandoned, or a view whose twin reports the error); asyncio would log it."""
    if not future.cancelled():
        future.exception()
