"""Receivers: take free slots, long-poll SQS ReceiveMessage for that many messages (at most
10), turn them into tasks (callback.py decides which) and hand those to the queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ....aws import SQSClient
from ...intake import IntakeLoop, IntakeParts
from ...task import Task

MAX_MESSAGES = 10  # SQS's most per ReceiveMessage
WAIT_SECONDS = 20  # SQS's longest long poll
# A receive ends at SQS WAIT_SECONDS after it arrived there: allow for the trip and clocks.
RECEIVE_END_MARGIN_SECONDS = 1.0


class OpenReceives:
    """When the source's open receives will have ended at SQS at the latest.

    A message released (visible again) while one of this worker's receives is open would be
    taken by that receive, released again, and so on: each round a receive more on the
    message's count, and a redrive policy moves a live task to the dead-letter queue after a
    few deploys. Cancelling the receive does not help: SQS keeps the abandoned long poll and
    delivers into it (aws-sdk-java-v2#1395, aws-sdk-net#1680). So a message is released to
    become visible only once the last open receive is over.
    """

    def __init__(self) -> None:
        self._ends: dict[int, float] = {}
        self._ids = 0

    def opened(self) -> int:
        self._ids += 1
        end = asyncio.get_running_loop().time() + WAIT_SECONDS + RECEIVE_END_MARGIN_SECONDS
        self._ends[self._ids] = end
        return self._ids

    def closed(self, receive: int) -> None:
        self._ends.pop(receive, None)

    def over_in(self) -> float:
        """Seconds until no receive of this source can take a message any more."""
        if not self._ends:
            return 0.0
        return max(0.0, max(self._ends.values()) - asyncio.get_running_loop().time())


class Receiver(IntakeLoop):
    """One receive loop (see IntakeLoop). A receive is never cancelled: SQS would still
    deliver into it, and those messages stay invisible for their visibility timeout."""

    API = "ReceiveMessage"
    NAME = "receiver"
    FAILED = "receive failed; backing off"
    MOST = MAX_MESSAGES  # ask for no more messages than there are slots to work them

    def __init__(
        self,
        number: int,
        parts: IntakeParts,
        *,
        client: SQSClient,
        queue_url: str,
        visibility_seconds: int,
        accept: Callable[[dict[str, Any], bool], Task | None],
        receives: OpenReceives,
    ) -> None:
        super().__init__(number, parts)
        self._client = client
        self._queue_url = queue_url
        self._visibility = visibility_seconds
        self._accept = accept
        self._receives = receives

    async def _fetch(self, count: int) -> list[Task]:
        messages = await self._receive(count)
        late = self._stopping.is_set()
        return [t for m in messages if (t := self._accept(m, late)) is not None]

    async def _receive(self, count: int) -> list[dict[str, Any]]:
        self._metrics.polls_open.inc()
        receive = self._receives.opened()
        try:
            # A long poll is not a trace (an empty one every 20 s per receiver): as for
            # GetActivityTask, the instrumentation is off for this call.
            with self._untraced():
                response = await self._client.receive_message(
                    QueueUrl=self._queue_url,
                    MaxNumberOfMessages=count,
                    WaitTimeSeconds=WAIT_SECONDS,
                    VisibilityTimeout=self._visibility,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                )
        finally:
            self._receives.closed(receive)
            self._metrics.polls_open.dec()
        messages = [dict(message) for message in response.get("Messages", [])]
        if not messages:
            self._metrics.empty_polls.inc()
        return messages
