"""Receivers: take free slots, long-poll SQS ReceiveMessage for that many messages (at most
10), turn them into tasks (callback.py decides which) and hand those to the queue."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..aws import SQSClient
from ..errors import FatalWorkerError
from ..metrics import SourceMetrics
from ..retry import POLL_BACKOFF, Backoff
from .intake import IntakeLoop
from .slots import Slots
from .task import Task

MAX_MESSAGES = 10  # SQS's most per ReceiveMessage
WAIT_SECONDS = 20  # SQS's longest long poll


class Receiver(IntakeLoop):
    """One receive loop (see IntakeLoop). A receive is never cancelled: its messages would
    stay invisible for their visibility timeout."""

    API = "ReceiveMessage"
    NAME = "receiver"
    FAILED = "receive failed; backing off"
    MOST = MAX_MESSAGES  # ask for no more messages than there are slots to work them

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
        super().__init__(
            number,
            slots=slots,
            ready=ready,
            queue=queue,
            stopping=stopping,
            on_fatal=on_fatal,
            metrics=metrics,
            backoff=backoff,
        )
        self._client = client
        self._queue_url = queue_url
        self._visibility = visibility_seconds
        self._accept = accept

    async def _fetch(self, count: int) -> list[Task]:
        messages = await self._receive(count)
        late = self._stopping.is_set()
        return [t for m in messages if (t := self._accept(m, late)) is not None]

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
