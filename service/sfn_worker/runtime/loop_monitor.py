"""Watches the event loop's responsiveness: a blocked loop stops polls and heartbeats."""

from __future__ import annotations

import asyncio

import structlog

from ..metrics import Metrics

log = structlog.get_logger("sfn_worker.loop")

SAMPLE_SECONDS = 0.5
BLOCKED_WARNING_SECONDS = 1.0


async def watch_loop_lag(metrics: Metrics) -> None:
    """Sample how late a timer fires; warn when something blocks the loop.

    The usual cause is an ``async def`` handler calling blocking code (``time.sleep``,
    ``requests``, heavy CPU): make it a plain ``def`` handler so it runs in a thread.
    """
    loop = asyncio.get_running_loop()
    while True:
        planned = loop.time() + SAMPLE_SECONDS
        await asyncio.sleep(SAMPLE_SECONDS)
        lag = max(0.0, loop.time() - planned)
        metrics.loop_lag.set(lag)
        metrics.last_loop_lag = lag
        if lag >= BLOCKED_WARNING_SECONDS:
            log.warning(
                "event loop was blocked; polls and heartbeats were delayed",
                blocked_seconds=round(lag, 2),
                hint="an async handler is running blocking code; use a sync handler instead",
            )
