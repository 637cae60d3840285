"""Heartbeats: every running token of one source, on one timer.

Between beats a token costs a heap entry, not a coroutine or a timer of its own: 10,000
long tasks are one timer and a heap of 10,000 entries. A beat that is due runs as a short
task that sends it (retrying while transient), then goes back on the heap. Throttled
beats are paced (tasks/pacing.py).

Each beat runs in its own task's context, captured when the task starts (a Context object
per entry, sharing the task's values): its log lines carry its token, and with tracing on
its SendTaskHeartbeat span is a child of its own task's span, not of whichever task
started the timer.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import random
from collections import deque
from typing import Protocol

import structlog

from ..aws import SFNClient
from ..aws_errors import ErrorKind, classify, error_code, is_throttling
from ..metrics import SourceMetrics
from ..redact import describe
from ..retry import SEND_BACKOFF, Again, Backoff, Retry, Stop, retrying
from .pacing import HeartbeatPacer

log = structlog.get_logger("sfn_worker.heartbeat")

# Heartbeat requests on the wire at once, per source; due beats beyond it wait their turn.
# Without a bound, beats that fall due together each opened a connection: 10,000 tasks at a
# 10 s interval held 2,000 connections and 50 MiB more RSS (bench/, memory). 64 at a 100 ms
# round trip still carry 640 beats/s, more than an account's SendTaskHeartbeat quota.
MAX_SENDING = 64

# Each wait is 90-100 % of the interval: never later than asked, and tasks that started
# together drift apart instead of heartbeating in bursts.
JITTER_FRACTION = 0.1


def next_wait(interval: float) -> float:
    return interval * (1 - JITTER_FRACTION * random.random())


class Beating(Protocol):
    """What a heartbeat needs of its running task."""

    token: str
    progress: int  # ctx.heartbeat() calls so far
    handler_started_at: float | None  # loop time; None while a handler process starts

    @property
    def token_hash(self) -> str: ...

    def task_gone(self, answer: str) -> None:
        """A heartbeat was answered TaskTimedOut / TaskDoesNotExist / InvalidToken."""
        ...


class Beat:
    """The heartbeat of one token. ``Heartbeats.stop`` must be awaited before the terminal
    call: no heartbeat may race the answer."""

    __slots__ = (
        "checked_at", "context", "due", "last_ok", "progress_seen", "sending", "sent",
        "stalled", "stopped", "task",
    )  # fmt: skip

    def __init__(self, task: Beating, now: float, context: contextvars.Context) -> None:
        self.task = task
        self.context = context  # the task's: its beats run in it (log context, trace span)
        self.due = now
        self.last_ok = now  # the task's start counts as a beat at the service
        self.checked_at = now  # when progress was last looked at (progress mode)
        self.progress_seen = 0
        self.stalled = False
        self.stopped = False
        self.sending = False  # a request is on the wire
        self.sent: asyncio.Task[bool | None] | None = None  # the beat being sent, with retries

    def __lt__(self, other: Beat) -> bool:
        return self.due < other.due


class Heartbeats:
    """The heartbeats of one source's running tokens.

    With ``progress_mode`` (SFN_HEARTBEAT_MODE=progress) a beat is sent only if the task's
    progress count moved since the last one: a handler that stops reporting lets its task
    time out at the service (HeartbeatSeconds), and a Retry re-drives it elsewhere.
    """

    def __init__(
        self,
        client: SFNClient,
        interval: float,
        metrics: SourceMetrics,
        *,
        progress_mode: bool = False,
        backoff: Backoff = SEND_BACKOFF,
    ) -> None:
        self._client = client
        self._interval = interval
        self._metrics = metrics
        self._progress_mode = progress_mode
        self._backoff = backoff
        self._heap: list[Beat] = []
        # The timer's context holds nothing: the timer only picks due beats, and each
        # beat's work runs in the beat's own context.
        self._context = contextvars.Context()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._stopped_in_heap = 0
        self._sending = 0  # beats on the wire (or retrying), at most MAX_SENDING
        self._waiting: deque[Beat] = deque()  # due beats waiting for one of those
        self._active = 0  # beats started and not stopped
        self._pacer: HeartbeatPacer[Beat] = HeartbeatPacer(
            self._start_send, interval, lambda: self._active
        )

    def start(self, task: Beating) -> Beat:
        """The task's first beat is due one interval from now; its beats run in the
        caller's context (the task's)."""
        beat = Beat(task, asyncio.get_running_loop().time(), contextvars.copy_context())
        self._active += 1
        self._schedule(beat)
        return beat

    def scheduled(self) -> int:
        """Entries on the heap, stopped ones not yet dropped included."""
        return len(self._heap)

    async def stop(self, beat: Beat) -> None:
        """No beat of this task after this returns. A request already sent is let finish
        (its answer may say the task is gone; cancelling it would only close its
        connection); a retry waiting for its backoff is cancelled."""
        if beat.stopped:
            return
        beat.stopped = True
        self._active -= 1
        sent = beat.sent
        if sent is None:
            self._drop_later()
            return
        if not beat.sending:
            sent.cancel()
        try:
            await asyncio.shield(sent)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    def _drop_later(self) -> None:
        """A stopped beat's entry stays on the heap until it comes up, unless stopped ones
        are most of the heap (short tasks, long interval): then they go at once."""
        self._stopped_in_heap += 1
        if self._stopped_in_heap > 64 and self._stopped_in_heap * 2 > len(self._heap):
            self._heap = [beat for beat in self._heap if not beat.stopped]
            heapq.heapify(self._heap)
            self._stopped_in_heap = 0

    # -- the timer -----------------------------------------------------------------------------
    def _schedule(self, beat: Beat) -> None:
        loop = asyncio.get_running_loop()
        beat.due = loop.time() + next_wait(self._interval)
        heapq.heappush(self._heap, beat)
        if self._timer is None or beat.due < self._timer_at:
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            self._timer_at = self._heap[0].due
            self._timer = loop.call_at(self._timer_at, self._fire, context=self._context)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = None
        now = loop.time()
        while self._heap and self._heap[0].due <= now:
            beat = heapq.heappop(self._heap)
            if beat.stopped:
                self._stopped_in_heap -= 1
                continue
            if not beat.context.run(self._progressed, beat, now):
                self._schedule(beat)
            elif self._pacer.active():
                self._pacer.queue(beat)
            else:
                self._start_send(beat)
        self._arm(loop)

    def _start_send(self, beat: Beat) -> None:
        if self._sending >= MAX_SENDING:
            self._waiting.append(beat)
            return
        self._sending += 1
        # In the beat's own context: one send at a time per beat, so never entered twice.
        beat.sent = sent = asyncio.create_task(self._send(beat), context=beat.context)
        sent.add_done_callback(functools.partial(self._sent, beat), context=beat.context)

    def _sent(self, beat: Beat, sent: asyncio.Task[bool | None]) -> None:
        beat.sent = None
        self._sending -= 1
        while self._waiting and self._sending < MAX_SENDING:
            waiting = self._waiting.popleft()
            if not waiting.stopped:
                self._start_send(waiting)
        if sent.cancelled():
            return
        error = sent.exception()
        if error is not None:
            log.error("heartbeat failed; no more heartbeats for this task", error=describe(error))
        elif (result := sent.result()) is None:
            return  # throttled: queued for pacing
        elif result and not beat.stopped:
            self._schedule(beat)
            return
        if not beat.stopped:
            beat.stopped = True  # no more beats: not on the heap either
            self._active -= 1

    # -- one beat ------------------------------------------------------------------------------
    def _progressed(self, beat: Beat, now: float) -> bool:
        """Timer mode: always. Progress mode: whether the handler reported progress since
        the last beat; the first interval without it marks the task stalled (logged once).
        The clock starts when the handler does: until it has run a whole interval (its
        process may take seconds to spawn, import or back off), the worker vouches for it."""
        if not self._progress_mode:
            return True
        started, checked_at = beat.task.handler_started_at, beat.checked_at
        beat.checked_at = now
        current = beat.task.progress
        if started is None or started > checked_at:
            beat.progress_seen = current
            return True
        if current != beat.progress_seen:
            beat.progress_seen = current
            if beat.stalled:
                log.info("stalled task reports progress again; heartbeats resume")
                beat.stalled = False
            return True
        if not beat.stalled:
            beat.stalled = True
            self._metrics.tasks_stalled.inc()
            log.warning(
                "task stalled: no progress reported since the last heartbeat; not "
                "heartbeating it, so Step Functions times it out (HeartbeatSeconds)",
                interval_seconds=self._interval,
            )
        return False

    async def _send(self, beat: Beat) -> bool | None:
        """One heartbeat, retried while transient; False when heartbeats must end, None
        when throttled (the beat then waits in the pacer's queue)."""
        structlog.contextvars.bind_contextvars(token=beat.task.token_hash)
        loop = asyncio.get_running_loop()
        metrics = self._metrics
        task = beat.task

        async def send() -> bool | None:
            beat.sending = True
            try:
                await self._client.send_task_heartbeat(taskToken=task.token)
            finally:
                beat.sending = False
            now = loop.time()
            beat.last_ok = now
            self._pacer.accepted(now)
            metrics.heartbeats_sent.inc()
            metrics.observe_heartbeat_lag(max(0.0, now - beat.due))
            return True

        def judge(exc: BaseException) -> Again | Stop[bool | None]:
            kind = classify(exc)
            metrics.heartbeat_failed(error_code(exc))
            if kind is ErrorKind.TASK_GONE:
                log.warning(
                    "heartbeat says the task is gone; cancelling it", answer=error_code(exc)
                )
                task.task_gone(error_code(exc))
                return Stop(False)
            if beat.stopped:
                return Stop(False)  # the answer goes next: no retry may race it
            if is_throttling(exc):
                self._pacer.throttled(beat)
                return Stop(None)
            if kind is not ErrorKind.TRANSIENT:
                log.error(
                    "heartbeat rejected; no more heartbeats for this task", error=describe(exc)
                )
                return Stop(False)
            return Again.AFTER_BACKOFF

        def on_retry(exc: BaseException, delay: float, retry: Retry) -> None:
            log.warning("heartbeat failed; retrying", error=describe(exc), retry_in=round(delay, 3))

        # Retry soon: a late heartbeat can still beat the state's HeartbeatSeconds.
        return await retrying(
            send,
            backoff=self._backoff,
            cap_seconds=self._interval / 2,
            judge=judge,
            on_retry=on_retry,
        )
