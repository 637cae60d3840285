"""What pollers and receivers share: take free slots, make one long request for that many
tasks, hand them to the queue; back off on errors, stop on fatal ones."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import ClassVar

import structlog

from ..errors import (
    API_ERRORS,
    ErrorKind,
    FatalWorkerError,
    classify,
    describe,
    error_code,
    is_throttling,
)
from ..metrics import SourceMetrics
from ..retry import POLL_BACKOFF, Backoff, Retry, note_throttled
from .slots import Slots
from .task import Task

log = structlog.get_logger("sfn_worker.intake")


class IntakeLoop:
    """One intake loop. While ``holds_task()`` a request may be open or its tasks not yet
    queued: a loop in that state must never be cancelled, or tasks the service already
    handed out are lost until their timeout."""

    API: ClassVar[str]  # the long request, for errors and throttle notices
    NAME: ClassVar[str]  # its log context key, e.g. "poller"
    FAILED: ClassVar[str]  # the warning when a request failed and is retried
    MOST: ClassVar[int] = 1  # slots one request may fill

    def __init__(
        self,
        number: int,
        *,
        slots: Slots,
        ready: Callable[[], Awaitable[None]],
        queue: asyncio.Queue[Task | None],
        stopping: asyncio.Event,
        stop_requested: asyncio.Event,
        on_fatal: Callable[[FatalWorkerError], None],
        metrics: SourceMetrics,
        backoff: Backoff = POLL_BACKOFF,
    ) -> None:
        self.number = number
        self._slots = slots
        self._ready = ready
        self._queue = queue
        self._stopping = stopping
        self._stop_requested = stop_requested
        self._on_fatal = on_fatal
        self._metrics = metrics
        self._backoff = backoff
        self._holds_task = False

    def holds_task(self) -> bool:
        return self._holds_task

    def _no_more_requests(self) -> bool:
        # A stop request (a signal) ends polling at once, before the shutdown begins.
        return self._stop_requested.is_set() or self._stopping.is_set()

    async def _fetch(self, count: int) -> list[Task]:
        """One long request for at most ``count`` tasks."""
        raise NotImplementedError

    async def run(self) -> None:
        with structlog.contextvars.bound_contextvars(**{self.NAME: self.number}):
            retry = Retry(self._backoff)
            while not self._no_more_requests():
                taken = await self._slots.take(self.MOST)
                # A slot is not enough: the handler must be able to start (process mode
                # backs off after handler processes die).
                try:
                    await self._ready()
                except BaseException:
                    self._slots.give(taken)
                    raise
                if self._no_more_requests():
                    self._slots.give(taken)
                    break
                self._holds_task = True
                try:
                    tasks = await self._fetch(taken)
                except API_ERRORS as exc:
                    self._holds_task = False
                    self._slots.give(taken)
                    if not self._keep_going_after(exc):
                        return
                    throttled = is_throttling(exc)
                    delay = retry.next_delay(throttled)
                    if throttled:
                        note_throttled(self.API)
                    else:
                        log.warning(self.FAILED, error=describe(exc), retry_in=round(delay, 2))
                    await retry.wait(delay)
                    continue
                retry.reset()
                # The slots of the tasks now belong to them (their coroutines release them);
                # the rest go back (an empty poll, poison messages, duplicates).
                self._slots.give(taken - len(tasks))
                for task in tasks:
                    await self._queue.put(task)
                self._holds_task = False

    def _keep_going_after(self, exc: BaseException) -> bool:
        self._metrics.poll_error(error_code(exc))
        # Only transient errors heal by waiting; anything else means this request can never work.
        if classify(exc) is not ErrorKind.TRANSIENT:
            self._on_fatal(FatalWorkerError(f"{self.API} failed: {describe(exc)}"))
            return False
        return True
