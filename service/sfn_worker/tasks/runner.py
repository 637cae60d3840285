"""Works one task: run the handler with its heartbeat, send the one answer, settle with the
task's source (activities: nothing more; callback queues: delete or release the message)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import structlog

from ..aio import cancel_and_wait, retrieve_exception
from ..aws import SFNClient
from ..context import Flag, TaskContext
from ..errors import SHUTDOWN_ERROR
from ..metrics import SourceMetrics
from ..redact import describe
from ..retry import SEND_BACKOFF, Backoff
from ..settings import HandlerMode, HeartbeatMode
from ..tracing import NO_SPAN, NO_TRACING, TaskSpan, Tracing
from .ended import RELEASED, Answered, Closed, Released, TaskEnd, Unanswered
from .handlers.invoker import HandlerCall, HandlerInvoker
from .heartbeat import Heartbeats
from .outcome import Failure, Outcome, Success, encode_output, from_exception, invalid_input
from .sender import ResultSender
from .source import TaskSource
from .task import Task

log = structlog.get_logger("sfn_worker.task")


class CancelReason(Enum):
    TASK_GONE = "task_gone"  # a heartbeat was answered TaskTimedOut / TaskDoesNotExist / ...
    SHUTDOWN = "shutdown"  # the shutdown grace period ran out


@dataclass(eq=False, slots=True)
class RunningTask:
    """The one record the worker keeps for each task it is working."""

    token: str = field(repr=False)
    ctx: TaskContext
    started_at: float
    # Done when the handler finished, or when the worker stops waiting for it.
    settled: asyncio.Future[None]
    handler: HandlerCall | None = None
    cancel_reason: CancelReason | None = None
    closed: Closed | None = None  # the service closed the task (a heartbeat said so)
    # ctx.heartbeat() calls (from any thread or, via its pipe, a handler process).
    progress: int = 0
    # Loop time the handler itself started (process mode: after its process started).
    handler_started_at: float | None = None

    @property
    def token_hash(self) -> str:
        return self.ctx.token_hash

    def cancel(self, reason: CancelReason) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.ctx.cancel_requested.set()
        if self.handler is not None:
            self.handler.result.cancel()

    def task_gone(self, answer: str) -> None:
        """A heartbeat was answered TaskTimedOut / TaskDoesNotExist / InvalidToken."""
        self.closed = Closed.by(answer)
        self.cancel(CancelReason.TASK_GONE)
        # A sync handler in a thread cannot be stopped: stop waiting for it.
        self.abandon()

    def settle(self, handler: asyncio.Future[Any] | None = None) -> None:
        if handler is not None:
            retrieve_exception(handler)  # the answer reports it
        if not self.settled.done():
            self.settled.set_result(None)

    def abandon(self) -> None:
        """Stop waiting for a handler that ignores cancellation (sync handler in a thread)."""
        self.settle()

    def report_progress(self) -> None:
        self.progress += 1  # a lost increment under a race still moves the count

    def handler_started(self) -> None:
        """On the event loop."""
        self.handler_started_at = asyncio.get_running_loop().time()

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
        if result.cancelled() and self.cancel_reason is not None:
            return Failure.of(
                SHUTDOWN_ERROR,
                "the worker shut down and the shutdown grace period ran out; "
                "the handler was interrupted",
            )
        return handler_outcome(result)


def handler_outcome(result: asyncio.Future[Any]) -> Outcome:
    """What to answer for a handler call that ended without the worker stopping it (what
    ``sfn_worker.testing.run_handler`` answers too)."""
    if result.cancelled():
        return Failure.of("CancelledError", "the handler was cancelled, not by the worker")
    error = result.exception()
    if error is not None:
        return from_exception(error)
    return encode_output(result.result())


@dataclass(frozen=True)
class TaskSettings:
    """What every task of one source shares."""

    worker_name: str
    source_name: str
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
        metrics: SourceMetrics,
        stopping: asyncio.Event,
        tasks_changed: asyncio.Event,
        on_task_end: Callable[[asyncio.Future[Any] | None], None],
        on_crash: Callable[[BaseException], None],
        source: TaskSource,
        heartbeat_backoff: Backoff = SEND_BACKOFF,
    ) -> None:
        self._settings = settings
        # With the handler's future when the handler still runs (it ignored cancellation):
        # the task's slot is not free until that future is done.
        self._on_task_end = on_task_end
        self._on_crash = on_crash
        self._source = source
        self._invoker = invoker
        self._sender = sender
        self._metrics = metrics
        self._stopping = stopping
        self._tasks_changed = tasks_changed
        self._heartbeats = (
            Heartbeats(
                client,
                settings.heartbeat_seconds,
                metrics,
                progress_mode=settings.heartbeat_mode is HeartbeatMode.PROGRESS,
                backoff=heartbeat_backoff,
            )
            if settings.heartbeat_seconds
            else None
        )
        self._running: set[RunningTask] = set()
        # One for every task: shutdown is requested of all of them at once.
        self._shutdown_requested = Flag()
        # Once the grace period is over tasks not yet started are failed, not run, and
        # terminal calls must finish by the send deadline.
        self._refuse_new_work = False
        self._send_deadline: float | None = None
        self._out_of_time = 0  # answers the shutdown's deadline cut off

    # -- what the activity's worker asks -----------------------------------------------------
    def running_count(self) -> int:
        return len(self._running)

    def request_shutdown(self) -> None:
        """Every running handler sees ``ctx.shutdown_requested``."""
        self._shutdown_requested.set()

    def stop_starting(self, send_deadline: float | None = None) -> None:
        """From now on tasks are not started (failed, or released by a source that can);
        answers end by the deadline."""
        self._refuse_new_work = True
        if send_deadline is not None:
            self._send_deadline = send_deadline

    def cancel_running(self) -> int:
        for record in self._running:
            record.cancel(CancelReason.SHUTDOWN)
        return len(self._running)

    def leave_unanswered(self) -> int:
        """The grace is over: tokens left unanswered, those still in flight (counted now)
        and those whose answer did not fit the deadline."""
        running = len(self._running)
        self._metrics.tasks_unanswered.inc(running)
        return running + self._out_of_time

    def abandon_running(self) -> int:
        """Stop waiting for every handler; returns how many ignore cancellation."""
        stubborn = sum(1 for r in self._running if r.handler_still_runs())
        for record in self._running:
            record.abandon()
        return stubborn

    # -- one task ----------------------------------------------------------------------------
    async def work(self, task: Task) -> None:
        """Work ``task`` to its one answer, then hand its slot back (``on_task_end``).

        Runs as its own asyncio task, so its log context is bound for good. One coroutine
        frame per task for the whole run (10,000 waiting tasks are 10,000 frames): the steps
        around the handler are plain methods.
        """
        try:
            record = self._begin(task)
        except Exception as exc:  # noqa: BLE001 - on_crash logs it and stops the worker
            self._on_crash(exc)
            self._on_task_end(None)
            return
        try:
            span = self._task_span(record, task)
            span.activate()
            outcome: Outcome | Released | Closed | None
            try:
                outcome = self._refused(task)
                if outcome is None and self._source.tracks_deliveries:
                    outcome = await self._source.admit(task)
                if outcome is None:
                    call = self._start_handler(task, record, span)
                    if not call.result.done():  # done already: a sync handler on the loop
                        # settle needs no context: share one instead of a copy per task.
                        call.result.add_done_callback(record.settle, context=_NO_CONTEXT)
                        heartbeats = self._heartbeats
                        beat = heartbeats.start(record) if heartbeats is not None else None
                        keeper = self._source.keep(task)
                        try:
                            await record.settled
                        finally:
                            if keeper is not None:
                                await cancel_and_wait(keeper)
                            if beat is not None:
                                assert heartbeats is not None
                                await heartbeats.stop(beat)
                    outcome = self._after_handler(record)
            except Exception as exc:
                log.exception("internal error while working the task")
                outcome = Failure.of("Worker.InternalError", describe(exc))
            duration = round(asyncio.get_running_loop().time() - record.started_at, 3)
            self._metrics.handler_duration.observe(duration)
            ended = await self._answer(record, outcome, duration)
            if self._source.tracks_deliveries:
                try:
                    await self._source.settle(task, ended)
                except Exception:
                    log.exception("internal error while settling the task with its source")
            span.end(ended.outcome, ended.error if isinstance(ended, Answered) else None)
        except Exception as exc:  # noqa: BLE001 - on_crash logs it and stops the worker
            self._on_crash(exc)
        finally:
            self._end(record)

    def _begin(self, task: Task) -> RunningTask:
        settings = self._settings
        if self._stopping.is_set():
            self._shutdown_requested.set()
        ctx = TaskContext(
            task_token=task.token,
            worker_name=settings.worker_name,
            source_name=settings.source_name,
            activity_arn=self._source.origin.activity_arn,
            queue_url=self._source.origin.queue_url,
            shutdown_requested=self._shutdown_requested,
            _stopping=self._stopping,
            _state=settings.state,
        )
        loop = asyncio.get_running_loop()
        record = RunningTask(task.token, ctx, loop.time(), loop.create_future())
        ctx._progress = record
        self._running.add(record)
        self._tasks_changed.set()
        structlog.contextvars.bind_contextvars(token=record.token_hash)
        if task.late:
            log.info("task started", late=True)
        else:
            log.info("task started")
        self._metrics.tasks_started.inc()
        return record

    def _end(self, record: RunningTask) -> None:
        self._running.discard(record)
        self._tasks_changed.set()
        finished = record.handler.finished if record.handler is not None else None
        self._on_task_end(finished if finished is not None and not finished.done() else None)

    def _refused(self, task: Task) -> Outcome | Released | None:
        """What to answer instead of running the handler, if anything."""
        if task.late or self._refuse_new_work:
            if not self._source.answers_at_shutdown:
                return RELEASED
            return Failure.of(
                SHUTDOWN_ERROR,
                "the worker was shutting down when this task arrived; it was not started",
            )
        if task.input_problem is not None:
            return invalid_input(ValueError(task.input_problem))
        return None

    def _start_handler(self, task: Task, record: RunningTask, span: TaskSpan) -> HandlerCall:
        handler_span = span.handler(self._settings.source_name)
        with handler_span.current():  # the handler's own spans are its children
            call = record.handler = self._invoker.start(task.input, record.ctx)
        if self._invoker.mode is not HandlerMode.PROCESS:  # a handler process says so itself
            record.handler_started()
        handler_span.end_with(call.result)
        return call

    def _after_handler(self, record: RunningTask) -> Outcome | Released | Closed:
        if record.cancel_reason is CancelReason.SHUTDOWN and not self._source.answers_at_shutdown:
            return RELEASED
        answer = record.answer()
        if answer is None:
            assert record.closed is not None, "only a closed task goes unanswered"
            return record.closed
        return answer

    def _task_span(self, record: RunningTask, task: Task) -> TaskSpan:
        settings = self._settings
        if not settings.tracing.enabled:
            return NO_SPAN
        attributes = {
            "sfn_worker.source.name": settings.source_name,
            "sfn_worker.source.kind": self._source.kind,
            "sfn_worker.worker.name": settings.worker_name,
            "sfn_worker.task.token_hash": record.token_hash,
            "sfn_worker.handler.mode": self._invoker.mode.value,
        }
        attributes.update(self._source.span_attributes(task))
        return settings.tracing.task(
            source=self._source.trace_system,
            destination=settings.source_name,
            attributes=attributes,
            task_input=task.input,
        )

    async def _answer(
        self, record: RunningTask, outcome: Outcome | Released | Closed, duration: float
    ) -> TaskEnd:
        """Send the one answer, if one is due; how the task ended, counted and logged."""
        ended: TaskEnd
        if isinstance(outcome, Released | Closed):
            ended = outcome
        else:
            try:
                ended = await self._sender.send(
                    record.token, outcome, self._send_deadline, record.started_at
                )
            except Exception:
                # A defect on the way out (the sender retries every API error itself) costs
                # this task's answer, never the worker.
                log.exception("internal error while answering the task")
                return Unanswered()
        self._report(ended, duration)
        return ended

    def _report(self, ended: TaskEnd, duration: float) -> None:
        metrics = self._metrics
        match ended:
            case Released():
                metrics.tasks_released.inc()
                log.info("task ended", outcome=ended.outcome, duration=duration)
            case Closed(at_answer=False):  # closed at the service, or a second delivery
                metrics.tasks_gone.inc()
                log.info(
                    "task ended", outcome=ended.outcome, answer=ended.answer, duration=duration
                )
            case Closed():
                metrics.tasks_gone.inc()
                log.info("task ended", outcome=ended.outcome, duration=duration)
            case Unanswered(out_of_time=True):
                # The grace ran out first: counted, and reported once by the shutdown.
                self._out_of_time += 1
                metrics.tasks_unanswered.inc()
            case Unanswered():
                metrics.tasks_gone.inc()
                log.info("task ended", outcome=ended.outcome, duration=duration)
            case Answered(sent=Success()):
                metrics.tasks_succeeded.inc()
                log.info("task ended", outcome=ended.outcome, duration=duration)
            case Answered():
                error = ended.error or "(none)"
                metrics.task_failed(error)
                log.info("task ended", outcome=ended.outcome, error=error, duration=duration)


_NO_CONTEXT = contextvars.Context()
