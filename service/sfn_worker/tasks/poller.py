"""Pollers: take a free slot, long-poll GetActivityTask, hand the task to the queue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from ..aws import SFNClient
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
from .outcome import decode_input
from .slots import Slots
from .task import Task

log = structlog.get_logger("sfn_worker.poller")


class Poller:
    """One long-poll loop. While ``holds_task()`` a request may be open or its task not yet
    queued: a poller in that state must never be cancelled, or a task the service already
    handed out is lost until its timeout."""

    def __init__(
        self,
        number: int,
        *,
        client: SFNClient,
        activity_arn: str,
        worker_name: str,
        slots: Slots,
        ready: Callable[[], Awaitable[None]],
        untraced: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
        queue: asyncio.Queue[Task | None],
        stopping: asyncio.Event,
        on_fatal: Callable[[FatalWorkerError], None],
        metrics: SourceMetrics,
        backoff: Backoff = POLL_BACKOFF,
    ) -> None:
        self.number = number
        self._client = client
        self._activity_arn = activity_arn
        self._worker_name = worker_name
        self._slots = slots
        self._ready = ready
        self._untraced = untraced
        self._queue = queue
        self._stopping = stopping
        self._on_fatal = on_fatal
        self._metrics = metrics
        self._backoff = backoff
        self._holds_task = False

    def holds_task(self) -> bool:
        return self._holds_task

    async def run(self) -> None:
        with structlog.contextvars.bound_contextvars(poller=self.number):
            retry = Retry(self._backoff)
            while not self._stopping.is_set():
                await self._slots.take()
                # A slot is not enough: the handler must be able to start (process mode
                # backs off after handler processes die).
                try:
                    await self._ready()
                except BaseException:
                    self._slots.give()
                    raise
                if self._stopping.is_set():
                    self._slots.give()
                    break
                self._holds_task = True
                try:
                    task = await self._poll()
                except API_ERRORS as exc:
                    self._holds_task = False
                    self._slots.give()
                    if not self._keep_going_after(exc):
                        return
                    throttled = is_throttling(exc)
                    delay = retry.next_delay(throttled)
                    if throttled:
                        note_throttled("GetActivityTask")
                    else:
                        log.warning(
                            "poll failed; backing off",
                            error=describe(exc),
                            retry_in=round(delay, 2),
                        )
                    await retry.wait(delay)
                    continue
                retry.reset()
                if task is None:
                    self._holds_task = False
                    self._slots.give()
                    continue
                # The slot now belongs to the task; the task coroutine releases it.
                await self._queue.put(task)
                self._holds_task = False

    async def _poll(self) -> Task | None:
        self._metrics.polls_open.inc()
        try:
            # An empty long poll every minute per poller is noise, not a trace.
            with self._untraced():
                response = await self._client.get_activity_task(
                    activityArn=self._activity_arn, workerName=self._worker_name
                )
        finally:
            self._metrics.polls_open.dec()
        token = response.get("taskToken")
        if not token:
            self._metrics.empty_polls.inc()
            return None
        # A task that arrives once shutdown began is not started: it is failed at once.
        try:
            task_input, problem = decode_input(response.get("input")), None
        except ValueError as exc:
            task_input, problem = None, str(exc)
        return Task(token, task_input, problem, late=self._stopping.is_set())

    def _keep_going_after(self, exc: BaseException) -> bool:
        self._metrics.poll_error(error_code(exc))
        # Only transient errors heal by waiting; anything else means this request can never work.
        if classify(exc) is not ErrorKind.TRANSIENT:
            self._on_fatal(FatalWorkerError(f"GetActivityTask failed: {describe(exc)}"))
            return False
        return True
