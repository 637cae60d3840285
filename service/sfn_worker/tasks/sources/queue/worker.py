"""A callback queue's worker: task tokens that ``.waitForTaskToken`` states put on SQS.

The message contract: a JSON object with the token at ``token_field`` ("TaskToken") and the
task input at ``input_field`` ("Input"). Around each task, the SQS side of the guarantees:

- received only with a free slot (receiver.py); kept invisible while its handler runs
  (visibility pushed out every third of SFN_<KEY>_VISIBILITY_SECONDS, through outages);
- a redelivered message (ApproximateReceiveCount > 1) is checked first with a heartbeat:
  if the service says its task is closed, the message is deleted without running the
  handler or sending a second answer; a second delivery while the task still runs here
  just hands over its newer receipt handle;
- deleted once the task is answered or closed (DeleteMessageBatch, retried; a failed
  delete never re-runs the handler: the next delivery is checked as above);
- poison (not JSON, no token, a token the service calls malformed): logged without the
  token, counted, and left for the queue's redrive policy (dead-letter queue);
- at shutdown, released so another worker finishes the task, unless SFN_SQS_ON_SHUTDOWN=fail
  asks for Worker.Shutdown, as for activities: visible again at once, or, while receives of
  this worker are still open, as soon as they are over (receiver.OpenReceives), so that a
  stop adds no receive of its own to the message's count.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import OrderedDict
from typing import Any, ClassVar, Self

import structlog

from ....aws import SFNClient, SQSClient
from ....aws_errors import ErrorKind, classify, error_code
from ....bulkhead import Accessory
from ....config import CallbackQueueConfig, SourceConfig
from ....context import token_hash
from ....metrics import SourceMetrics
from ....redact import describe
from ....retry import SEND_BACKOFF, Again, Backoff, Retry, Stop, retrying
from ....settings import OnShutdown
from ....tracing import NO_TRACING, Tracing
from ...ended import MALFORMED_TOKEN, Answered, Closed, Released, TaskEnd, Unanswered
from ...intake import IntakeParts
from ...source import Origin
from ...source_worker import Intake, SourceParts, SourceWorker
from ...task import Task
from .message import SqsMessage, message_of
from .receiver import RECEIVE_END_MARGIN_SECONDS, WAIT_SECONDS, OpenReceives, Receiver
from .sqs_calls import SqsCalls

log = structlog.get_logger("sfn_worker.callback")

# Recently settled message ids: a copy delivered again is deleted without a probe.
REMEMBERED_MESSAGES = 10_000
PROBE_SECONDS = 60.0  # the redelivery check is retried this long, then the task runs
RELEASE_SECONDS = 10.0
# Redelivery checks on the wire at once, per queue (the quick-calls pool is sized from it):
# after a worker dies, all its messages come back together.
MAX_PROBING = 16


class CallbackSource:
    kind = "queue"
    trace_system = "aws_sqs"  # OpenTelemetry's messaging.system for SQS
    tracks_deliveries = True

    def __init__(
        self,
        config: CallbackQueueConfig,
        *,
        sqs: SQSClient,
        sfn: SFNClient,
        metrics: SourceMetrics,
        accessory: Accessory,
        backoff: Backoff = SEND_BACKOFF,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.answers_at_shutdown = config.on_shutdown is OnShutdown.FAIL
        self.origin = Origin(queue_url=config.queue_url)
        self._config = config
        self._sfn = sfn
        self._metrics = metrics
        self._backoff = backoff
        self._calls = SqsCalls(
            sqs, config.queue_url, accessory, backoff, queue_name=config.name, tracing=tracing
        )
        self.receives = OpenReceives()
        self._running: dict[str, Task] = {}  # by message id
        self._probing = asyncio.Semaphore(MAX_PROBING)
        self._settled: OrderedDict[str, None] = OrderedDict()
        self._tokens: set[str] = set()  # the tokens of _running

    # -- intake ----------------------------------------------------------------------------
    def accept(self, message: dict[str, Any], late: bool) -> Task | None:
        """The task a received message carries, or None (poison, or a duplicate delivery)."""
        message_id = str(message.get("MessageId", ""))
        receipt = str(message.get("ReceiptHandle", ""))
        attributes = message.get("Attributes") or {}
        count = int(attributes.get("ApproximateReceiveCount", "1"))
        with structlog.contextvars.bound_contextvars(message_id=message_id, receive_count=count):
            running = self._running.get(message_id)
            if running is not None:
                message_of(running).receipt_handle = receipt  # the newest handle is valid
                log.info("message delivered again while its task runs here; keeping one")
                return None
            if message_id in self._settled:
                log.info("message delivered again after its task was settled; deleting it")
                self._calls.delete_soon(SqsMessage(message_id, receipt, count))
                return None
            task = self._parse(message_id, receipt, count, str(message.get("Body", "")), late)
            if task is not None and task.token in self._tokens:
                # Another message with this token (a SendMessage retried makes a second
                # one): not run twice; its next delivery finds the task closed and goes.
                log.info(
                    "another message carries a token running here; leaving it for later",
                    token=token_hash(task.token),
                )
                return None
        if task is not None:
            self._running[message_id] = task
            self._tokens.add(task.token)
        return task

    def _parse(
        self, message_id: str, receipt: str, count: int, body: str, late: bool
    ) -> Task | None:
        config = self._config
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            self._poison("not_json", "the message body is not a JSON object")
            return None
        token = document.get(config.token_field)
        if not isinstance(token, str) or not token:
            self._poison("no_token", f"the message has no token at {config.token_field!r}")
            return None
        message = SqsMessage(message_id, receipt, count)
        return Task(token, document.get(config.input_field), None, late, delivery=message)

    def _poison(self, reason: str, description: str) -> None:
        self._metrics.poison_message(reason)
        log.warning(
            "poison message left for the queue's redrive policy",
            reason=description,
            hint="give the queue a redrive policy (dead-letter queue) with a maxReceiveCount",
        )

    # -- around the task (TaskSource) ------------------------------------------------------
    def span_attributes(self, task: Task) -> dict[str, str]:
        return {
            "messaging.message.id": message_of(task).message_id,
            "sfn_worker.queue.url": self._config.queue_url,
        }

    async def admit(self, task: Task) -> Closed | None:
        """A redelivered message: the service says whether its task is still open."""
        if message_of(task).receive_count <= 1:
            return None
        give_up_at = asyncio.get_running_loop().time() + PROBE_SECONDS

        async def probe() -> Closed | None:
            async with self._probing:
                await self._sfn.send_task_heartbeat(taskToken=task.token)
            return None

        def judge(exc: BaseException) -> Again | Stop[Closed | None]:
            code = error_code(exc)
            if code == MALFORMED_TOKEN:
                return Stop(Closed.by(code))
            kind = classify(exc)
            if kind is ErrorKind.TASK_GONE:
                log.info(
                    "message delivered again for a closed task; deleting it unanswered",
                    answer=code,
                    token=token_hash(task.token),
                )
                return Stop(Closed.by(code))
            if kind is not ErrorKind.TRANSIENT:
                return _run_unchecked(exc)
            return Again.AFTER_BACKOFF

        def before_wait(
            exc: BaseException, delay: float, retry: Retry
        ) -> Stop[Closed | None] | None:
            if asyncio.get_running_loop().time() + delay > give_up_at:
                return _run_unchecked(exc)
            return None

        return await retrying(probe, backoff=self._backoff, judge=judge, before_wait=before_wait)

    def keep(self, task: Task) -> asyncio.Task[None]:
        return self._calls.keep_invisible(message_of(task), self._config.visibility_seconds)

    async def settle(self, task: Task, ended: TaskEnd) -> None:
        message = message_of(task)
        if self._running.pop(message.message_id, None) is not None:
            self._tokens.discard(task.token)
        match ended:
            case Closed(malformed=True):
                self._poison("malformed_token", "Step Functions calls the message's token invalid")
            case Answered() | Closed():
                await self._forget(message)
            case Released():
                visible_in = math.ceil(self.receives.over_in())
                await self._calls.release(message, visible_in, RELEASE_SECONDS)
            case Unanswered():
                pass  # left as it is; its next delivery is checked before it runs again

    async def _forget(self, message: SqsMessage) -> None:
        self._settled[message.message_id] = None
        while len(self._settled) > REMEMBERED_MESSAGES:
            self._settled.popitem(last=False)
        await self._calls.delete_soon(message)

    async def aclose(self) -> None:
        await self._calls.flush()


def _run_unchecked(exc: BaseException) -> Stop[Closed | None]:
    log.warning("could not check a redelivered task; running it", error=describe(exc))
    return Stop(None)


class CallbackQueueWorker(SourceWorker):
    open_poll_seconds: ClassVar[float] = WAIT_SECONDS + RECEIVE_END_MARGIN_SECONDS

    def __init__(self, config: CallbackQueueConfig, parts: SourceParts, metrics: SourceMetrics):
        assert parts.clients.sqs is not None, "a callback queue needs the process's SQS clients"
        self._callback = CallbackSource(
            config,
            sqs=parts.clients.sqs,
            sfn=parts.clients.calls,
            metrics=metrics,
            accessory=parts.shared.accessories.get("sqs_housekeeping"),
            backoff=parts.shared.send_backoff,
            tracing=parts.shared.tracing,
        )
        self._queue_config = config
        super().__init__(config, parts, metrics, self._callback)

    @classmethod
    def serving(cls, config: SourceConfig, parts: SourceParts, metrics: SourceMetrics) -> Self:
        assert isinstance(config, CallbackQueueConfig)
        return cls(config, parts, metrics)

    @classmethod
    async def probe(
        cls, config: SourceConfig, calls: SFNClient, sqs: SQSClient | None
    ) -> list[str]:
        assert sqs is not None, "a callback queue needs the process's SQS clients"
        attributes = await sqs.get_queue_attributes(
            QueueUrl=str(config.address), AttributeNames=["RedrivePolicy"]
        )
        if "RedrivePolicy" in attributes.get("Attributes", {}):
            return []
        return [
            "WARNING: the queue has no redrive policy: poison messages come "
            "back for ever instead of moving to a dead-letter queue"
        ]

    def _make_intakes(self, parts: IntakeParts) -> list[Intake]:
        assert self._parts.clients.sqs_polls is not None
        return [
            Receiver(
                number,
                parts,
                client=self._parts.clients.sqs_polls,
                queue_url=self._queue_config.queue_url,
                visibility_seconds=self._queue_config.visibility_seconds,
                accept=self._callback.accept,
                receives=self._callback.receives,
            )
            for number in range(self.config.pollers)
        ]
