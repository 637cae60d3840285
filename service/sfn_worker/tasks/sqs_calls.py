"""The SQS calls around a callback task's message: keep it invisible, delete it, release it.

Each is retried with jittered backoff while transient. A receipt handle SQS no longer
accepts (the message was deleted, or delivered again with a newer handle) ends the attempt:
a message left behind is delivered again, and its task's state decides then.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from ..aws import SQSClient
from ..errors import API_ERRORS, STALE_RECEIPT_CODES, ErrorKind, classify, describe, error_code
from ..retry import SEND_BACKOFF, Backoff, Retry
from .task import SqsMessage

log = structlog.get_logger("sfn_worker.sqs")

DELETE_RETRY_SECONDS = 300.0
BATCH_WAIT_SECONDS = 0.02  # deletes that arrive within this share one DeleteMessageBatch
BATCH_SIZE = 10


@dataclass(eq=False)
class _Delete:
    message: SqsMessage
    done: asyncio.Future[bool]


class SqsCalls:
    def __init__(self, client: SQSClient, queue_url: str, backoff: Backoff = SEND_BACKOFF) -> None:
        self._client = client
        self._url = queue_url
        self._backoff = backoff
        self._pending: list[_Delete] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- visibility ------------------------------------------------------------------------
    def keep_invisible(self, message: SqsMessage, seconds: int) -> asyncio.Task[None]:
        """Until cancelled, push the message's visibility out by ``seconds`` every half of
        it, so it never becomes visible (and delivered again) under a running handler."""
        return asyncio.create_task(self._keep(message, seconds))

    async def _keep(self, message: SqsMessage, seconds: int) -> None:
        while True:
            await asyncio.sleep(seconds / 2)
            if not await self._change_visibility(message, seconds, give_up_after=seconds / 4):
                return

    async def release(self, message: SqsMessage, give_up_after: float) -> bool:
        """Visible again at once: another worker takes the task (its token is still valid)."""
        return await self._change_visibility(message, 0, give_up_after)

    async def _change_visibility(
        self, message: SqsMessage, seconds: int, give_up_after: float
    ) -> bool:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + give_up_after
        retry = Retry(self._backoff)
        while True:
            try:
                await self._client.change_message_visibility(
                    QueueUrl=self._url,
                    ReceiptHandle=message.receipt_handle,
                    VisibilityTimeout=seconds,
                )
                return True
            except API_ERRORS as exc:
                if (
                    error_code(exc) in STALE_RECEIPT_CODES
                    or classify(exc) is not ErrorKind.TRANSIENT
                ):
                    log.warning(
                        "SQS refused a visibility change",
                        message_id=message.message_id,
                        error=describe(exc),
                        visibility_seconds=seconds,
                    )
                    return False
                delay = retry.next_delay()
                if loop.time() + delay > give_up_at:
                    log.warning(
                        "visibility change kept failing; giving up on it",
                        message_id=message.message_id,
                        error=describe(exc),
                    )
                    return False
                await retry.wait(delay)

    # -- deletes, batched ------------------------------------------------------------------
    def delete_soon(self, message: SqsMessage) -> asyncio.Future[bool]:
        """Delete the message (its latest receipt handle) in the next batch; the future says
        whether SQS took it."""
        entry = _Delete(message, asyncio.get_running_loop().create_future())
        self._pending.append(entry)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())
        return entry.done

    async def flush(self) -> None:
        """Send what is pending now (at shutdown)."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush_soon(self) -> None:
        while self._pending:
            if len(self._pending) < BATCH_SIZE:
                await asyncio.sleep(BATCH_WAIT_SECONDS)
            batch, self._pending = self._pending[:BATCH_SIZE], self._pending[BATCH_SIZE:]
            await self._delete_batch(batch)

    async def _delete_batch(self, batch: list[_Delete]) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + DELETE_RETRY_SECONDS
        retry = Retry(self._backoff)
        waiting = {str(n): entry for n, entry in enumerate(batch)}
        while waiting:
            entries = [
                {"Id": n, "ReceiptHandle": e.message.receipt_handle} for n, e in waiting.items()
            ]
            try:
                answer = await self._client.delete_message_batch(
                    QueueUrl=self._url,
                    Entries=entries,  # type: ignore[arg-type]
                )
            except API_ERRORS as exc:
                if classify(exc) is not ErrorKind.TRANSIENT:
                    self._finish(waiting, False, describe(exc))
                    return
            else:
                for ok in answer.get("Successful", []):
                    waiting.pop(ok["Id"]).done.set_result(True)
                for bad in answer.get("Failed", []):
                    # A stale handle or a request fault will not heal; the rest is retried.
                    code = bad.get("Code", "")
                    if code in STALE_RECEIPT_CODES or bad.get("SenderFault"):
                        self._finish({bad["Id"]: waiting.pop(bad["Id"])}, False, code)
            if not waiting:
                return
            delay = retry.next_delay()
            if loop.time() + delay > give_up_at:
                self._finish(waiting, False, "still failing after retries")
                return
            log.warning("message delete failed; retrying", count=len(waiting), retry_in=delay)
            await retry.wait(delay)

    @staticmethod
    def _finish(entries: dict[str, _Delete], ok: bool, reason: str) -> None:
        for entry in entries.values():
            if not ok:
                log.warning(
                    "message not deleted; it will be delivered again and its task's state "
                    "decides then",
                    message_id=entry.message.message_id,
                    reason=reason,
                )
            if not entry.done.done():
                entry.done.set_result(ok)
