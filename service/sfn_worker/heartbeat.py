"""One heartbeat coroutine per running task token."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import structlog

from .client import SFNClient
from .errors import API_ERRORS, ErrorKind, classify, describe, error_code
from .metrics import Metrics
from .retry import SEND_BACKOFF, Backoff

log = structlog.get_logger("sfn_worker.heartbeat")

# Each wait is 90-100 % of the interval: never later than asked, and tasks that started
# together drift apart instead of heartbeating in bursts.
JITTER_FRACTION = 0.1


async def heartbeat_until_cancelled(
    client: SFNClient,
    token: str,
    interval: float,
    metrics: Metrics,
    on_task_gone: Callable[[str], None],
    backoff: Backoff = SEND_BACKOFF,
) -> None:
    """Heartbeat every ``interval`` seconds until cancelled or the task is gone.

    ``on_task_gone`` gets the service's answer (TaskTimedOut, ...) and must stop the handler.
    """
    loop = asyncio.get_running_loop()
    while True:
        wait = interval * (1 - JITTER_FRACTION * random.random())
        due = loop.time() + wait
        await asyncio.sleep(wait)
        attempt = 0
        while True:
            try:
                await client.send_task_heartbeat(taskToken=token)
            except API_ERRORS as exc:
                kind = classify(exc)
                metrics.heartbeats_failed.labels(code=error_code(exc)).inc()
                if kind is ErrorKind.TASK_GONE:
                    log.warning(
                        "heartbeat says the task is gone; cancelling it", answer=error_code(exc)
                    )
                    on_task_gone(error_code(exc))
                    return
                if kind is not ErrorKind.TRANSIENT:
                    log.error(
                        "heartbeat rejected; no more heartbeats for this task", error=describe(exc)
                    )
                    return
                # Retry soon: a late heartbeat can still beat the state's HeartbeatSeconds.
                delay = min(backoff.delay(attempt), interval / 2)
                log.warning(
                    "heartbeat failed; retrying", error=describe(exc), retry_in=round(delay, 3)
                )
                attempt += 1
                await asyncio.sleep(delay)
            else:
                metrics.heartbeats_sent.inc()
                metrics.heartbeat_lag.observe(max(0.0, loop.time() - due))
                break
