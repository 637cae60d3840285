"""Receivers: take free slots, long-poll SQS ReceiveMessage for that many messages (at most
10), turn them into tasks (callback.py decides which) and hand those to the queue."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ..aws import SQSClient
from ..errors import API_ERRORS, ErrorKind, FatalWorkerError, classify, describe, error_code
from ..metrics import SourceMetrics
from ..retry import POLL_BACKOFF, Backoff, Retry
from .slots import Slots
from .task import Task

log = structlog.get_logger("sfn_worker.receiver")

MAX_MESSAGES = 10  # SQS's most per ReceiveMessage
WAIT_SECONDS = 20  # SQS's longest long poll


class Receiver:
    """One receive loop. While ``holds_task()`` a ReceiveMessage may be open or its tasks not
    queued yet; a receive is never cancelled (its messages would stay invisible for their
    visibility timeout)."""

    def __init__(
        self,
        number: int,
        *,
        client: SQSClient,
        queue_url: str,
        visibility_seconds: int,
        accept: Callable[[dict[str, Any], bool], Task | None],
        slots: Slots,
        ready: Callable[[], Awaitable[None]],
        queue: asyncio.Queue[Task | None],
        stopping: asyncio.Event,
        on_fatal: Callable[[FatalWorkerError], None],
        metrics: SourceMetrics,
        backoff: Backoff = POLL_BACKOFF,
    ) -> None:
        self.number = number
        self._client = client
        self._queue_url = queue_url
        self._visibility = visibility_seconds
        self._accept = accept
        self._slots = slots
        self._ready = ready
        self._queue = queue
        self._stopping = stopping
        self._on_fatal = on_fatal
        self._metrics = metrics
        self._backoff = backoff
        self._holds_task = False

    def holds_task(self) -> bool:
        return self._holds_task

    async def run(self) -> None:
        with structlog.contextvars.bound_contextvars(receiver=self.number):
            retry = Retry(self._backoff)
            while not self._stopping.is_set():
                # Ask for no more messages than there are slots to work them.
                taken = await self._slots.take(MAX_MESSAGES)
                try:
                    await self._ready()
                except BaseException:
                    self._slots.give(taken)
                    raise
                if self._stopping.is_set():
                    self._slots.give(taken)
                    break
                self._holds_task = True
                try:
                    messages = await self._receive(taken)
                except API_ERRORS as exc:
                    self._holds_task = False
                    self._slots.give(taken)
                    if not self._keep_going_after(exc):
                        return
                    delay = retry.next_delay()
                    log.warning(
                        "receive failed; backing off", error=describe(exc), retry_in=round(delay, 2)
                    )
                    await retry.wait(delay)
                    continue
                retry.reset()
                late = self._stopping.is_set()
                tasks = [t for m in messages if (t := self._accept(m, late)) is not None]
                self._slots.give(taken - len(tasks))  # slots of poison and duplicates
                for task in tasks:
                    await self._queue.put(task)
                self._holds_task = False

    async def _receive(self, count: int) -> list[dict[str, Any]]:
        self._metrics.polls_open.inc()
        try:
            response = await self._client.receive_message(
                QueueUrl=self._queue_url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=WAIT_SECONDS,
                VisibilityTimeout=self._visibility,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        finally:
            self._metrics.polls_open.dec()
        messages = [dict(message) for message in response.get("Messages", [])]
        if not messages:
            self._metrics.empty_polls.inc()
        return messages

    def _keep_going_after(self, exc: BaseException) -> bool:
        self._metrics.poll_error(error_code(exc))
        if classify(exc) is not ErrorKind.TRANSIENT:
            self._on_fatal(FatalWorkerError(f"ReceiveMessage failed: {describe(exc)}"))
            return False
        return True
