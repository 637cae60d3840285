"""SQS, as far as a callback-task worker uses it, served by the same fake endpoint (AWS JSON
1.0, ``AmazonSQS.*``): ReceiveMessage (long poll, visibility timeout, receipt handles,
ApproximateReceiveCount, a redrive to a dead-letter list), ChangeMessageVisibility,
DeleteMessage(Batch), GetQueueAttributes, SendMessage.

``fake.sqs.add_callback_task(input, queue=...)`` is what a ``.waitForTaskToken`` state does:
an open task at the fake Step Functions, its token and input in a message on the queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..aws_errors import SQS_QUERY_CODES

if TYPE_CHECKING:
    from .fake_sfn import FakeStepFunctions, FakeTask

ACCOUNT = "123456789012"


@dataclass(eq=False)
class FakeMessage:
    message_id: str
    body: str = field(repr=False)
    receive_count: int = 0
    visible_at: float = 0.0
    receipt_handle: str = ""  # the latest one: the only one that deletes it
    deleted: bool = False
    task: FakeTask | None = None


@dataclass(eq=False)
class FakeQueue:
    name: str
    url: str
    max_receive_count: int = 0  # redrive after this many receives (0 = no redrive policy)
    messages: list[FakeMessage] = field(default_factory=list)
    dead_letters: list[FakeMessage] = field(default_factory=list)
    # What workers asked for: for the "no message without a slot" check.
    requested: list[int] = field(default_factory=list)
    receiving: int = 0
    stale_deletes: int = 0  # deletes with a receipt handle that was not the latest


class FakeSqs:
    def __init__(self, sfn: FakeStepFunctions) -> None:
        self._sfn = sfn
        self.queues: dict[str, FakeQueue] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._pending_notice: asyncio.Future[None] | None = None

    def add_queue(
        self, name: str, *, url: str | None = None, max_receive_count: int = 0
    ) -> FakeQueue:
        """A queue on this endpoint; ``url`` lets an app's real queue URL name it."""
        url = url or f"{self._sfn.endpoint_url}/{ACCOUNT}/{name}"
        queue = self.queues.get(url) or FakeQueue(name, url, max_receive_count)
        self.queues[url] = queue
        return queue

    def send(self, queue: FakeQueue, body: str) -> FakeMessage:
        message = FakeMessage(f"msg-{next(self._ids):06d}", body)
        queue.messages.append(message)
        self._wake()
        return message

    def add_callback_task(
        self, task_input: Any, *, queue: FakeQueue, token_field: str = "TaskToken"
    ) -> tuple[FakeTask, FakeMessage]:
        """What a sendMessage.waitForTaskToken state does: an open task, its message."""
        task = self._sfn.open_callback_task(task_input)
        body = json.dumps({token_field: task.token, "Input": task_input})
        message = self.send(queue, body)
        message.task = task
        return task, message

    def redeliver(self, message: FakeMessage) -> None:
        """Make a message visible again now (its visibility ran out, or SQS delivers a copy)."""
        message.visible_at = 0.0
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the protocol -----------------------------------------------------------------------
    async def handle(self, operation: str, params: dict[str, Any]) -> web.Response:
        queue = self.queues.get(str(params.get("QueueUrl", "")))
        if queue is None:
            return sqs_error("QueueDoesNotExist", "The specified queue does not exist.")
        handler = getattr(self, f"_op_{operation}", None)
        if handler is None:
            return sqs_error("UnsupportedOperation", operation)
        response: web.Response = await handler(queue, params)
        return response

    async def _op_ReceiveMessage(self, queue: FakeQueue, params: dict[str, Any]) -> web.Response:
        wanted = int(params.get("MaxNumberOfMessages", 1))
        if not 1 <= wanted <= 10:
            return sqs_error("InvalidParameterValue", "MaxNumberOfMessages must be 1-10")
        queue.requested.append(wanted)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(20.0, float(params.get("WaitTimeSeconds", 0)))
        visibility = float(params.get("VisibilityTimeout", 30))
        queue.receiving += 1
        await self._sfn.notify()  # a receive is open now: whoever waits for one hears of it
        try:
            while True:
                visible = [m for m in queue.messages if m.visible_at <= loop.time()]
                if visible or loop.time() >= deadline or self._sfn.polls_released():
                    break
                wake = self._changed
                next_visible = min((m.visible_at for m in queue.messages), default=deadline)
                timeout = max(0.0, min(deadline, next_visible) - loop.time())
                released = asyncio.ensure_future(self._sfn.wait_release())
                try:
                    await asyncio.wait(
                        {asyncio.ensure_future(wake.wait()), released}, timeout=timeout,
                        return_when=asyncio.FIRST_COMPLETED,
                    )  # fmt: skip
                finally:
                    released.cancel()
        finally:
            queue.receiving -= 1
            # Also when the server cancels a receive whose client went away (as aiohttp may):
            # whoever waits on ``receiving`` hears of it.
            self._pending_notice = asyncio.ensure_future(self._sfn.notify())
        taken = []
        for message in visible[:wanted]:
            message.receive_count += 1
            if queue.max_receive_count and message.receive_count > queue.max_receive_count:
                queue.messages.remove(message)
                queue.dead_letters.append(message)
                continue
            message.visible_at = loop.time() + visibility
            message.receipt_handle = f"{message.message_id}#{secrets.token_hex(8)}"
            taken.append(message)
        await self._sfn.notify()
        return _ok(
            {
                "Messages": [
                    {
                        "MessageId": m.message_id,
                        "ReceiptHandle": m.receipt_handle,
                        "MD5OfBody": hashlib.md5(m.body.encode()).hexdigest(),
                        "Body": m.body,
                        "Attributes": {"ApproximateReceiveCount": str(m.receive_count)},
                    }
                    for m in taken
                ]
            }
        )

    def _by_receipt(self, queue: FakeQueue, receipt: str) -> FakeMessage | None:
        message_id = receipt.partition("#")[0]
        return next((m for m in queue.messages if m.message_id == message_id), None)

    async def _op_ChangeMessageVisibility(
        self, queue: FakeQueue, params: dict[str, Any]
    ) -> web.Response:
        message = self._by_receipt(queue, str(params.get("ReceiptHandle", "")))
        if message is None or message.receipt_handle != params.get("ReceiptHandle"):
            return sqs_error("ReceiptHandleIsInvalid", "The receipt handle is not valid.")
        seconds = float(params.get("VisibilityTimeout", 0))
        message.visible_at = asyncio.get_running_loop().time() + seconds
        if seconds == 0:
            self._wake()
        await self._sfn.notify()
        return _ok({})

    async def _op_DeleteMessage(self, queue: FakeQueue, params: dict[str, Any]) -> web.Response:
        self._delete(queue, str(params.get("ReceiptHandle", "")))
        await self._sfn.notify()
        return _ok({})

    async def _op_DeleteMessageBatch(
        self, queue: FakeQueue, params: dict[str, Any]
    ) -> web.Response:
        entries = params.get("Entries", [])
        if not 1 <= len(entries) <= 10:
            return sqs_error("TooManyEntriesInBatchRequest", "1-10 entries")
        for entry in entries:
            self._delete(queue, str(entry["ReceiptHandle"]))
        await self._sfn.notify()
        return _ok({"Successful": [{"Id": e["Id"]} for e in entries], "Failed": []})

    def _delete(self, queue: FakeQueue, receipt: str) -> None:
        message = self._by_receipt(queue, receipt)
        if message is None:
            return
        if message.receipt_handle != receipt:
            queue.stale_deletes += 1  # SQS answers OK, and the message stays
            return
        message.deleted = True
        queue.messages.remove(message)

    async def _op_GetQueueAttributes(
        self, queue: FakeQueue, params: dict[str, Any]
    ) -> web.Response:
        attributes = {"QueueArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:{queue.name}"}
        if queue.max_receive_count:
            attributes["RedrivePolicy"] = json.dumps(
                {"maxReceiveCount": queue.max_receive_count, "deadLetterTargetArn": "dlq"}
            )
        return _ok({"Attributes": attributes})

    async def _op_SendMessage(self, queue: FakeQueue, params: dict[str, Any]) -> web.Response:
        body = str(params.get("MessageBody", ""))
        if not body:
            # As SQS answers an empty body (its code says missing, though it was sent).
            return sqs_error(
                "MissingParameter", "The request must contain the parameter MessageBody."
            )
        message = self.send(queue, body)
        return _ok({"MessageId": message.message_id})


def _ok(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, content_type="application/x-amz-json-1.0")


# SQS answers its errors with these HTTP statuses (400 otherwise) and, but for the four
# without one, the query-compatible code in x-amzn-query-error, which botocore then reports
# as the error's code (from the AWS SDKs' SQS models).
SQS_STATUS = {
    "InvalidAddress": 404,
    "InvalidSecurity": 403,
    "KmsOptInRequired": 403,
    "OverLimit": 403,
    "PurgeQueueInProgress": 403,
    "ReceiptHandleIsInvalid": 404,
    "RequestThrottled": 403,
    "ResourceNotFoundException": 404,
}
NO_QUERY_CODE = frozenset(
    {"InvalidAttributeName", "InvalidAttributeValue", "InvalidIdFormat", "InvalidMessageContents"}
)


def sqs_error(code: str, message: str, status: int | None = None) -> web.Response:
    """An error as SQS sends it; ``code`` is the name in SQS's model (or a common code)."""
    headers = {}
    if code not in NO_QUERY_CODE:
        headers["x-amzn-query-error"] = f"{SQS_QUERY_CODES.get(code, code)};Sender"
    return web.json_response(
        {"__type": f"com.amazonaws.sqs#{code}", "message": message},
        status=status or SQS_STATUS.get(code, 400),
        content_type="application/x-amz-json-1.0",
        headers=headers,
    )
