"""One heartbeat per running task token, started once the first beat is due."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import structlog

from ..aio import cancel_and_wait
from ..aws import SFNClient
from ..errors import API_ERRORS, ErrorKind, classify, describe, error_code
from ..metrics import SourceMetrics
from ..retry import SEND_BACKOFF, Backoff, Retry

log = structlog.get_logger("sfn_worker.heartbeat")

# Each wait is 90-100 % of the interval: never later than asked, and tasks that started
# together drift apart instead of heartbeating in bursts.
JITTER_FRACTION = 0.1


def next_wait(interval: float) -> float:
    return interval * (1 - JITTER_FRACTION * random.random())


class Heartbeat:
    """The heartbeat of one running token.

    A timer waits for the first beat; only a task that outlives one interval gets its
    heartbeat coroutine, so short tasks cost a timer, not a coroutine. ``stop`` must be
    awaited before the terminal call: no heartbeat may race the answer.

    With ``progress`` (SFN_HEARTBEAT_MODE=progress) a beat is sent only if that count moved
    since the last one: a handler that stops reporting lets its task time out at the
    service (HeartbeatSeconds), and a Retry re-drives it elsewhere.
    """

    def __init__(
        self,
        client: SFNClient,
        token: str,
        interval: float,
        metrics: SourceMetrics,
        on_task_gone: Callable[[str], None],
        backoff: Backoff = SEND_BACKOFF,
        progress: Callable[[], int] | None = None,
    ) -> None:
        self._client = client
        self._progress = progress
        self._progress_seen = 0
        self._stalled = False
        self._token = token
        self._interval = interval
        self._metrics = metrics
        self._on_task_gone = on_task_gone
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        first = next_wait(interval)
        self._timer = loop.call_later(first, self._begin, loop.time() + first)

    def _begin(self, due: float) -> None:
        self._task = asyncio.create_task(self._beat(due))

    async def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _beat(self, due: float) -> None:
        """Heartbeat every interval until cancelled or the task is gone."""
        loop = asyncio.get_running_loop()
        while not self._progressed() or await self._send(due):
            wait = next_wait(self._interval)
            due = loop.time() + wait
            await asyncio.sleep(wait)

    def _progressed(self) -> bool:
        """Timer mode: always. Progress mode: whether the handler reported progress since
        the last beat; the first interval without it marks the task stalled (logged once)."""
        if self._progress is None:
            return True
        current = self._progress()
        if current != self._progress_seen:
            self._progress_seen = current
            if self._stalled:
                log.info("stalled task reports progress again; heartbeats resume")
                self._stalled = False
            return True
        if not self._stalled:
            self._stalled = True
            self._metrics.tasks_stalled.inc()
            log.warning(
                "task stalled: no progress reported since the last heartbeat; not "
                "heartbeating it, so Step Functions times it out (HeartbeatSeconds)",
                interval_seconds=self._interval,
            )
        return False

    async def _send(self, due: float) -> bool:
        """One heartbeat, retried while transient; False when heartbeats must end."""
        loop = asyncio.get_running_loop()
        metrics = self._metrics
        # Retry soon: a late heartbeat can still beat the state's HeartbeatSeconds.
        retry = Retry(self._backoff, cap_seconds=self._interval / 2)
        while True:
            try:
                await self._client.send_task_heartbeat(taskToken=self._token)
            except API_ERRORS as exc:
                kind = classify(exc)
                metrics.heartbeat_failed(error_code(exc))
                if kind is ErrorKind.TASK_GONE:
                    log.warning(
                        "heartbeat says the task is gone; cancelling it", answer=error_code(exc)
                    )
                    self._on_task_gone(error_code(exc))
                    return False
                if kind is not ErrorKind.TRANSIENT:
                    log.error(
                        "heartbeat rejected; no more heartbeats for this task", error=describe(exc)
                    )
                    return False
                delay = retry.next_delay()
                log.warning(
                    "heartbeat failed; retrying", error=describe(exc), retry_in=round(delay, 3)
                )
                await retry.wait(delay)
            else:
                metrics.heartbeats_sent.inc()
                metrics.observe_heartbeat_lag(max(0.0, loop.time() - due))
                return True
