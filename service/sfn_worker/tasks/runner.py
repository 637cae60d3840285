"""Works one task: decode input, run the handler with its heartbeat, send the one answer."""

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
from ..metrics import ActivityMetrics
from ..retry import SEND_BACKOFF, Backoff
from ..settings import HeartbeatMode
from ..tracing import NO_TRACING, TaskSpan, Tracing
from .handlers import HandlerCall, HandlerInvoker
from .heartbeat import Heartbeat
from .outcome import (
    Failure,
    Outcome,
    Success,
    decode_input,
    encode_output,
    from_exception,
    invalid_input,
)
from .sender import ResultSender, SendResult
from .task import ActivityTask

log = structlog.get_logger("sfn_worker.task")

# messaging.system of an activity task's span (OpenTelemetry has no registered value).
TRACE_SOURCE = "aws.stepfunctions"


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
    """What every task of one activity shares."""

    worker_name: str
    activity_arn: str
    activity_name: str
    heartbeat_seconds: float
    heartbeat_mode: HeartbeatMode
    state: Any
    tracing: Tracing = NO_TRACING


class TaskRunner:
    def __init__(
        self,
        settings: TaskSettings,
        *,
        client: SFNClient,
        invoker: HandlerInvoker,
        sender: ResultSender,
        metrics: ActivityMetrics,
        stopping: asyncio.Event,
        tasks_changed: asyncio.Event,
        heartbeat_backoff: Backoff = SEND_BACKOFF,
    ) -> None:
        self._settings = settings
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

    def stop_starting(self, send_deadline: float) -> None:
        """From now on tasks are failed rather than started, answers end by the deadline."""
        self._refuse_new_work = True
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
    async def work(self, task: ActivityTask) -> asyncio.Future[Any] | None:
        """Work ``task`` to its one answer. Returns the handler's future if the handler still
        runs (it ignored cancellation): its slot is not free until that future is done."""
        loop = asyncio.get_running_loop()
        settings = self._settings
        ctx = TaskContext(
            task_token=task.token,
            worker_name=settings.worker_name,
            activity_arn=settings.activity_arn,
            activity_name=settings.activity_name,
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

    async def _work(self, task: ActivityTask, record: RunningTask) -> None:
        loop = asyncio.get_running_loop()
        if task.late:
            log.info("task started", late=True)
        else:
            log.info("task started")
        self._metrics.tasks_started.inc()
        try:
            task_input, problem = decode_input(task.raw_input), None
        except ValueError as exc:
            task_input, problem = None, exc
        span = self._task_span(record, task_input)
        with span.current():
            try:
                outcome = await self._outcome(task, record, task_input, problem, span)
            except Exception as exc:
                log.exception("internal error while working the task")
                outcome = Failure.of("Worker.InternalError", describe(exc))
            duration = round(loop.time() - record.started_at, 3)
            self._metrics.handler_duration.observe(duration)
            ended, error = await self._answer(record, outcome, duration)
        span.end(ended, error)

    def _task_span(self, record: RunningTask, task_input: Any) -> TaskSpan:
        settings = self._settings
        return settings.tracing.task(
            source=TRACE_SOURCE,
            destination=settings.activity_name,
            attributes={
                "aws.step_functions.activity.arn": settings.activity_arn,
                "sfn_worker.activity.name": settings.activity_name,
                "sfn_worker.worker.name": settings.worker_name,
                "sfn_worker.task.token_hash": record.token_hash,
                "sfn_worker.handler.mode": self._invoker.mode.value,
            },
            task_input=task_input,
        )

    async def _answer(
        self, record: RunningTask, outcome: Outcome | None, duration: float
    ) -> tuple[str, str | None]:
        """Send the one answer; returns how the task ended and its error name."""
        if outcome is None:
            self._metrics.tasks_gone.inc()
            log.info("task ended", outcome="gone", answer=record.gone_answer, duration=duration)
            return "gone", None
        try:
            result, sent = await self._sender.send(record.token, outcome, self._send_deadline)
        except Exception:
            # A defect on the way out (the sender retries every API error itself) costs this
            # task's answer, never the worker.
            log.exception("internal error while answering the task")
            result, sent = SendResult.GAVE_UP, outcome
        if result is SendResult.TASK_GONE or result is SendResult.GAVE_UP:
            self._metrics.tasks_gone.inc()
            log.info("task ended", outcome=result.value, duration=duration)
            return result.value, None
        if isinstance(sent, Success):
            self._metrics.tasks_succeeded.inc()
            log.info("task ended", outcome="succeeded", duration=duration)
            return "succeeded", None
        error = sent.error or "(none)"  # a bare failure, after KMS refused the answer
        self._metrics.task_failed(error)
        log.info("task ended", outcome="failed", error=error, duration=duration)
        return "failed", error

    async def _outcome(
        self,
        task: ActivityTask,
        record: RunningTask,
        task_input: Any,
        problem: ValueError | None,
        span: TaskSpan,
    ) -> Outcome | None:
        """The answer to send, or None when the task is gone and nothing may be sent."""
        if task.late or self._refuse_new_work:
            return Failure.of(
                SHUTDOWN_ERROR,
                "the worker was shutting down when this task arrived; it was not started",
            )
        if problem is not None:
            return invalid_input(problem)
        handler_span = span.handler(self._settings.activity_name)
        with handler_span.current():  # the handler's own spans are its children
            call = record.handler = self._invoker.start(task_input, record.ctx)
        handler_span.end_with(call.result)
        call.result.add_done_callback(lambda _: record.settled.set())
        call.result.add_done_callback(retrieve_exception)
        heartbeat = self._start_heartbeat(record)
        try:
            await record.settled.wait()
        finally:
            if heartbeat is not None:
                await heartbeat.stop()

        return record.answer()

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
