"""The SQS calls around a callback task's message: keep it invisible, delete it, release it.

SQS housekeeping is an accessory (bulkhead.py): its failures are logged once, then at most
once a minute, counted and shown in /healthz, and never stop the worker.

- Visibility is pushed out every third of the visibility timeout for as long as the task
  runs; a failed extension is retried with backoff, at least every sixth of it (never
  given up while the task runs), so an outage of up to half the visibility costs nothing
  wherever it falls (measured: tests/hostile/test_callback_queue.py). If the
  visibility really lapsed (SQS refuses the receipt handle), that is said once: another
  worker may now run the task too; a later delivery of it to this worker hands over a newer
  handle and the extension resumes with it.
- A receipt handle SQS no longer accepts ends a delete or a release: a message left behind
  is delivered again, and its task's state decides then.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from ....aws import SQSClient
from ....aws_errors import API_ERRORS, STALE_RECEIPT_CODES, ErrorKind, classify, error_code
from ....bulkhead import Accessory
from ....redact import describe
from ....retry import SEND_BACKOFF, Again, Backoff, Retry, Stop, retrying
from ....tracing import NO_TRACING, Tracing
from .message import SqsMessage

log = structlog.get_logger("sfn_worker.sqs")

DELETE_RETRY_SECONDS = 300.0
BATCH_WAIT_SECONDS = 0.02  # deletes that arrive within this share one DeleteMessageBatch
BATCH_SIZE = 10
# A failed visibility extension is retried at least this often (and at least six times
# per visibility timeout), however long the outage.
EXTEND_RETRY_CAP_SECONDS = 5.0


class _SomeFailed(Exception):
    """Some entries of a batch failed and are worth another try."""


class _Stale(Exception):
    """SQS no longer accepts the receipt handle."""


@dataclass(eq=False)
class _Delete:
    message: SqsMessage
    done: asyncio.Future[bool]
    span: object | None = None  # the task's span, which records what became of its delete


class SqsCalls:
    def __init__(
        self,
        client: SQSClient,
        queue_url: str,
        accessory: Accessory,
        backoff: Backoff = SEND_BACKOFF,
        *,
        queue_name: str = "",
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self._client = client
        self._url = queue_url
        self._queue_name = queue_name
        self._tracing = tracing
        self._accessory = accessory
        self._backoff = backoff
        self._pending: list[_Delete] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- visibility ------------------------------------------------------------------------
    def keep_invisible(self, message: SqsMessage, seconds: int) -> asyncio.Task[None]:
        """Until cancelled, push the message's visibility out by ``seconds`` every third of
        it, so it never becomes visible (and delivered again) under a running handler."""
        return asyncio.create_task(self._keep(message, seconds))

    async def _keep(self, message: SqsMessage, seconds: int) -> None:
        lapsed: str | None = None  # the receipt handle SQS refused
        retry_cap = min(EXTEND_RETRY_CAP_SECONDS, seconds / 6)
        while True:
            await asyncio.sleep(seconds / 3)
            if message.receipt_handle == lapsed:
                continue  # nothing to extend until a newer delivery hands over its handle
            try:
                await self._until_done(message, seconds, retry_cap)
            except _Stale as exc:
                lapsed = message.receipt_handle
                log.warning(
                    "the message's visibility lapsed while its task runs: another worker "
                    "may run the task too",
                    message_id=message.message_id,
                    error=str(exc),
                    hint="a longer SFN_<KEY>_VISIBILITY_SECONDS rides out longer outages",
                )

    async def _until_done(self, message: SqsMessage, seconds: int, retry_cap: float) -> None:
        """One extension, retried until it works (or the handle is stale)."""

        async def extend() -> None:
            await self._visibility(message, seconds)
            self._accessory.recovered()

        def judge(exc: BaseException) -> Again:
            if error_code(exc) in STALE_RECEIPT_CODES:
                raise _Stale(describe(exc)) from None
            return Again.AFTER_BACKOFF

        def on_retry(exc: BaseException, delay: float, retry: Retry) -> None:
            self._accessory.failed(exc, call="ChangeMessageVisibility", retry_in=round(delay, 2))

        await retrying(
            extend, backoff=self._backoff, cap_seconds=retry_cap, judge=judge, on_retry=on_retry
        )

    async def release(self, message: SqsMessage, visible_in: int, give_up_after: float) -> bool:
        """Visible again in ``visible_in`` seconds (0: at once): another worker takes the task
        (its token is still valid)."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + give_up_after

        async def make_visible() -> bool:
            await self._visibility(message, visible_in)
            return True

        def not_released(exc: BaseException) -> Stop[bool]:
            # Not fatal: the message becomes visible when its timeout runs out.
            self._accessory.failed(exc, call="ChangeMessageVisibility (release)")
            return Stop(False)

        def judge(exc: BaseException) -> Again | Stop[bool]:
            stale = error_code(exc) in STALE_RECEIPT_CODES
            if stale or classify(exc) is not ErrorKind.TRANSIENT:
                return not_released(exc)
            return Again.AFTER_BACKOFF

        def before_wait(exc: BaseException, delay: float, retry: Retry) -> Stop[bool] | None:
            return not_released(exc) if loop.time() + delay > give_up_at else None

        return await retrying(
            make_visible, backoff=self._backoff, judge=judge, before_wait=before_wait
        )

    async def _visibility(self, message: SqsMessage, seconds: int) -> None:
        await self._client.change_message_visibility(
            QueueUrl=self._url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=seconds
        )

    # -- deletes, batched ------------------------------------------------------------------
    def delete_soon(self, message: SqsMessage) -> asyncio.Future[bool]:
        """Delete the message (its latest receipt handle) in the next batch; the future says
        whether SQS took it."""
        loop = asyncio.get_running_loop()
        entry = _Delete(message, loop.create_future(), self._tracing.current())
        self._pending.append(entry)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())
        return entry.done

    async def flush(self) -> None:
        """Send what is pending now (at shutdown)."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush_soon(self) -> None:
        # Started by one task's delete, it serves every task's: no token of its own.
        structlog.contextvars.unbind_contextvars("token")
        while self._pending:
            if len(self._pending) < BATCH_SIZE:
                await asyncio.sleep(BATCH_WAIT_SECONDS)
            batch, self._pending = self._pending[:BATCH_SIZE], self._pending[BATCH_SIZE:]
            attributes: dict[str, str | int] = {
                "messaging.system": "aws_sqs",
                "messaging.operation.type": "settle",
                "messaging.operation.name": "delete",
                "messaging.destination.name": self._queue_name,
                "messaging.batch.message_count": len(batch),
            }
            with self._tracing.batch(
                f"delete {self._queue_name}", [e.span for e in batch], attributes
            ):
                await self._delete_batch(batch)

    async def _delete_batch(self, batch: list[_Delete]) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + DELETE_RETRY_SECONDS
        waiting = {str(n): entry for n, entry in enumerate(batch)}

        async def delete() -> None:
            entries = [
                {"Id": n, "ReceiptHandle": e.message.receipt_handle} for n, e in waiting.items()
            ]
            answer = await self._client.delete_message_batch(
                QueueUrl=self._url,
                Entries=entries,  # type: ignore[arg-type]
            )
            self._accessory.recovered()
            for ok in answer.get("Successful", []):
                self._settled(waiting.pop(ok["Id"]), True)
            for bad in answer.get("Failed", []):
                # A stale handle or a request fault will not heal; the rest is retried.
                code = bad.get("Code", "")
                if code in STALE_RECEIPT_CODES or bad.get("SenderFault"):
                    self._finish({bad["Id"]: waiting.pop(bad["Id"])}, False, code)
            if waiting:
                raise _SomeFailed

        def judge(exc: BaseException) -> Again | Stop[None]:
            if isinstance(exc, _SomeFailed) or classify(exc) is ErrorKind.TRANSIENT:
                return Again.AFTER_BACKOFF
            self._finish(waiting, False, describe(exc))
            return Stop(None)

        def before_wait(exc: BaseException, delay: float, retry: Retry) -> Stop[None] | None:
            if loop.time() + delay > give_up_at:
                self._finish(waiting, False, "still failing after retries")
                return Stop(None)
            return None

        def on_retry(exc: BaseException, delay: float, retry: Retry) -> None:
            self._accessory.failed(
                f"{len(waiting)} deletes failed",
                call="DeleteMessageBatch",
                retry_in=round(delay, 2),
            )

        await retrying(
            delete,
            backoff=self._backoff,
            judge=judge,
            before_wait=before_wait,
            on_retry=on_retry,
            errors=(*API_ERRORS, _SomeFailed),
        )

    def _settled(self, entry: _Delete, ok: bool) -> None:
        if not entry.done.done():
            entry.done.set_result(ok)
        self._tracing.event(
            entry.span,
            "sfn_worker.sqs.delete",
            {"messaging.message.id": entry.message.message_id, "sfn_worker.sqs.deleted": ok},
        )

    def _finish(self, entries: dict[str, _Delete], ok: bool, reason: str) -> None:
        for entry in entries.values():
            if not ok:
                log.warning(
                    "message not deleted; it will be delivered again and its task's state "
                    "decides then",
                    message_id=entry.message.message_id,
                    reason=reason,
                )
            self._settled(entry, ok)
