"""Works one task: run the handler with its heartbeat, send the one answer, settle with the
task's source (activities: nothing more; callback queues: delete or release the message)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import structlog

from ..aio import retrieve_exception
from ..aws import SFNClient
from ..context import TaskContext
from ..errors import SHUTDOWN_ERROR, describe
from ..metrics import SourceMetrics
from ..retry import SEND_BACKOFF, Backoff
from ..settings import HeartbeatMode
from ..tracing import NO_TRACING, TaskSpan, Tracing
from .handlers import HandlerCall, HandlerInvoker
from .heartbeat import Heartbeat
from .outcome import Failure, Outcome, Success, encode_output, from_exception, invalid_input
from .sender import ResultSender, SendResult
from .source import ActivitySource, Ended, TaskSource
from .task import Task

log = structlog.get_logger("sfn_worker.task")

# messaging.system of a task's span: OpenTelemetry registers aws_sqs, nothing for activities.
TRACE_SYSTEMS = {"activity": "aws.stepfunctions", "queue": "aws_sqs"}
# What the runner decides instead of an answer.
RELEASE = "release"  # hand the task back to its source, unanswered (callback queues)
GONE = "gone"  # the task is closed at the service: send nothing
NotSent = str


class CancelReason(Enum):
    TASK_GONE = "task_gone"  # a heartbeat was answered TaskTimedOut / TaskDoesNotExist / ...
    SHUTDOWN = "shutdown"  # the shutdown grace period ran out


@dataclass(eq=False)
class RunningTask:
    """The one record the worker keeps for each task it is working."""

    token: str = field(repr=False)
    ctx: TaskContext
    started_at: float
    handler: HandlerCall | None = None
    cancel_reason: CancelReason | None = None
    gone_answer: str = ""
    # ctx.heartbeat() calls (from any thread or, via its pipe, a handler process).
    progress: int = 0
    # Set when the handler finished, or when the worker stops waiting for it.
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def token_hash(self) -> str:
        return self.ctx.token_hash

    def cancel(self, reason: CancelReason) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.ctx.cancel_requested.set()
        if self.handler is not None:
            self.handler.result.cancel()

    def abandon(self) -> None:
        """Stop waiting for a handler that ignores cancellation (sync handler in a thread)."""
        self.settled.set()

    def report_progress(self) -> None:
        self.progress += 1  # a lost increment under a race still moves the count

    def handler_still_runs(self) -> bool:
        return self.handler is not None and not self.handler.finished.done()

    def answer(self) -> Outcome | None:
        """Once settled: what to answer, or None when the task is gone and nothing may be."""
        if self.cancel_reason is CancelReason.TASK_GONE:
            return None
        assert self.handler is not None, "only a started handler settles"
        result = self.handler.result
        if self.cancel_reason is not None and self.handler_still_runs():
            return Failure.of(
                SHUTDOWN_ERROR,
                "the worker shut down and the handler did not stop when cancelled; "
                "its result, if any, is discarded",
            )
        if result.cancelled() and self.cancel_reason is None:
            return Failure.of("CancelledError", "the handler was cancelled, not by the worker")
        if result.cancelled():
            return Failure.of(
                SHUTDOWN_ERROR,
                "the worker shut down and the shutdown grace period ran out; "
                "the handler was interrupted",
            )
        error = result.exception()
        if error is not None:
            return from_exception(error)
        return encode_output(result.result())


@dataclass(frozen=True)
class TaskSettings:
    """What every task of one source (an activity or a callback queue) shares."""

    worker_name: str
    source_name: str
    heartbeat_seconds: float
    heartbeat_mode: HeartbeatMode
    state: Any
    activity_arn: str = ""
    queue_url: str = ""
    tracing: Tracing = NO_TRACING


class TaskRunner:
    def __init__(
        self,
        settings: TaskSettings,
        *,
        client: SFNClient,
        invoker: HandlerInvoker,
        sender: ResultSender,
        metrics: SourceMetrics,
        stopping: asyncio.Event,
        tasks_changed: asyncio.Event,
        source: TaskSource | None = None,
        heartbeat_backoff: Backoff = SEND_BACKOFF,
    ) -> None:
        self._settings = settings
        self._source = source or ActivitySource()
        self._client = client
        self._invoker = invoker
        self._sender = sender
        self._metrics = metrics
        self._stopping = stopping
        self._tasks_changed = tasks_changed
        self._heartbeat_backoff = heartbeat_backoff
        self._running: dict[int, RunningTask] = {}
        # Once the grace period is over tasks not yet started are failed, not run, and
        # terminal calls must finish by the send deadline.
        self._refuse_new_work = False
        self._send_deadline: float | None = None

    # -- what the activity's worker asks -----------------------------------------------------
    def running_count(self) -> int:
        return len(self._running)

    def request_shutdown(self) -> None:
        """Every running handler sees ``ctx.shutdown_requested``."""
        for record in self._running.values():
            record.ctx.shutdown_requested.set()

    def stop_starting(self, send_deadline: float | None = None) -> None:
        """From now on tasks are not started (failed, or released by a source that can);
        answers end by the deadline."""
        self._refuse_new_work = True
        if send_deadline is not None:
            self._send_deadline = send_deadline

    def cancel_running(self) -> int:
        for record in self._running.values():
            record.cancel(CancelReason.SHUTDOWN)
        return len(self._running)

    def abandon_running(self) -> int:
        """Stop waiting for every handler; returns how many ignore cancellation."""
        stubborn = sum(1 for r in self._running.values() if r.handler_still_runs())
        for record in self._running.values():
            record.abandon()
        return stubborn

    # -- one task ----------------------------------------------------------------------------
    async def work(self, task: Task) -> asyncio.Future[Any] | None:
        """Work ``task`` to its one answer. Returns the handler's future if the handler still
        runs (it ignored cancellation): its slot is not free until that future is done."""
        loop = asyncio.get_running_loop()
        settings = self._settings
        ctx = TaskContext(
            task_token=task.token,
            worker_name=settings.worker_name,
            activity_arn=settings.activity_arn,
            queue_url=settings.queue_url,
            source_name=settings.source_name,
            _stopping=self._stopping,
            _state=settings.state,
        )
        if self._stopping.is_set():
            ctx.shutdown_requested.set()
        record = RunningTask(token=task.token, ctx=ctx, started_at=loop.time())
        ctx._on_progress = record.report_progress
        self._running[id(record)] = record
        self._metrics.tasks_in_flight.inc()
        self._tasks_changed.set()
        try:
            with structlog.contextvars.bound_contextvars(token=record.token_hash):
                await self._work(task, record)
        finally:
            self._metrics.tasks_in_flight.dec()
            del self._running[id(record)]
            self._tasks_changed.set()
        finished = record.handler.finished if record.handler is not None else None
        return finished if finished is not None and not finished.done() else None

    async def _work(self, task: Task, record: RunningTask) -> None:
        loop = asyncio.get_running_loop()
        if task.late:
            log.info("task started", late=True)
        else:
            log.info("task started")
        self._metrics.tasks_started.inc()
        span = self._task_span(record, task)
        with span.current():
            try:
                outcome = await self._outcome(task, record, span)
            except Exception as exc:
                log.exception("internal error while working the task")
                outcome = Failure.of("Worker.InternalError", describe(exc))
            duration = round(loop.time() - record.started_at, 3)
            self._metrics.handler_duration.observe(duration)
            ended, how, error = await self._answer(record, outcome, duration)
            try:
                await self._source.settle(task, ended)
            except Exception:
                log.exception("internal error while settling the task with its source")
        span.end(how, error)

    def _task_span(self, record: RunningTask, task: Task) -> TaskSpan:
        settings = self._settings
        attributes = {
            "sfn_worker.source.name": settings.source_name,
            "sfn_worker.worker.name": settings.worker_name,
            "sfn_worker.task.token_hash": record.token_hash,
            "sfn_worker.handler.mode": self._invoker.mode.value,
        }
        if settings.activity_arn:
            attributes["aws.step_functions.activity.arn"] = settings.activity_arn
        if task.message is not None:
            attributes["messaging.message.id"] = task.message.message_id
            attributes["sfn_worker.queue.url"] = settings.queue_url
        return settings.tracing.task(
            source=TRACE_SYSTEMS[self._source.kind],
            destination=settings.source_name,
            attributes=attributes,
            task_input=task.input,
        )

    async def _answer(
        self, record: RunningTask, outcome: Outcome | NotSent, duration: float
    ) -> tuple[Ended, str, str | None]:
        """Send the one answer; how the task ended for its source, in words, and its error."""
        if outcome == RELEASE:
            self._metrics.tasks_released.inc()
            log.info("task ended", outcome="released", duration=duration)
            return Ended.RELEASED, "released", None
        if isinstance(outcome, str):  # GONE: closed at the service, or a second delivery
            self._metrics.tasks_gone.inc()
            log.info("task ended", outcome="gone", answer=record.gone_answer, duration=duration)
            return _ended_by(record.gone_answer), "gone", None
        try:
            report = await self._sender.send(record.token, outcome, self._send_deadline)
        except Exception:
            # A defect on the way out (the sender retries every API error itself) costs this
            # task's answer, never the worker.
            log.exception("internal error while answering the task")
            return Ended.UNANSWERED, SendResult.GAVE_UP.value, None
        if report.result is SendResult.TASK_GONE:
            self._metrics.tasks_gone.inc()
            log.info("task ended", outcome=report.result.value, duration=duration)
            return _ended_by(report.answer), report.result.value, None
        if report.result is SendResult.GAVE_UP:
            self._metrics.tasks_gone.inc()
            log.info("task ended", outcome=report.result.value, duration=duration)
            return Ended.UNANSWERED, report.result.value, None
        if isinstance(report.sent, Success):
            self._metrics.tasks_succeeded.inc()
            log.info("task ended", outcome="succeeded", duration=duration)
            return Ended.ANSWERED, "succeeded", None
        error = report.sent.error or "(none)"  # a bare failure, after KMS refused the answer
        self._metrics.task_failed(error)
        log.info("task ended", outcome="failed", error=error, duration=duration)
        return Ended.ANSWERED, "failed", error

    async def _outcome(self, task: Task, record: RunningTask, span: TaskSpan) -> Outcome | NotSent:
        """The answer to send, or what to do instead (RELEASE, GONE)."""
        if task.late or self._refuse_new_work:
            if not self._source.answers_at_shutdown:
                return RELEASE
            return Failure.of(
                SHUTDOWN_ERROR,
                "the worker was shutting down when this task arrived; it was not started",
            )
        if task.input_problem is not None:
            return invalid_input(ValueError(task.input_problem))
        refused = await self._source.admit(task)
        if refused is not None:
            record.gone_answer = refused.value
            return GONE
        handler_span = span.handler(self._settings.source_name)
        with handler_span.current():  # the handler's own spans are its children
            call = record.handler = self._invoker.start(task.input, record.ctx)
        handler_span.end_with(call.result)
        call.result.add_done_callback(lambda _: record.settled.set())
        call.result.add_done_callback(retrieve_exception)
        heartbeat = self._start_heartbeat(record)
        try:
            async with self._source.keep(task):
                await record.settled.wait()
        finally:
            if heartbeat is not None:
                await heartbeat.stop()

        if record.cancel_reason is CancelReason.SHUTDOWN and not self._source.answers_at_shutdown:
            return RELEASE
        answer = record.answer()
        return GONE if answer is None else answer

    def _start_heartbeat(self, record: RunningTask) -> Heartbeat | None:
        if not self._settings.heartbeat_seconds:
            return None

        def task_gone(answer: str) -> None:
            record.gone_answer = answer
            record.cancel(CancelReason.TASK_GONE)
            # A sync handler in a thread cannot be stopped: stop waiting for it.
            record.abandon()

        return Heartbeat(
            self._client,
            record.token,
            self._settings.heartbeat_seconds,
            self._metrics,
            task_gone,
            self._heartbeat_backoff,
            progress=(
                (lambda: record.progress)
                if self._settings.heartbeat_mode is HeartbeatMode.PROGRESS
                else None
            ),
        )


def _ended_by(answer: str) -> Ended:
    """A closed task: InvalidToken means the service cannot read the token at all."""
    if answer in ("InvalidToken", Ended.MALFORMED.value):
        return Ended.MALFORMED
    if answer == Ended.ANSWERED.value:
        return Ended.ANSWERED
    return Ended.GONE
