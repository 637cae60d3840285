"""What pollers and receivers share: take free slots, make one long request for that many
tasks, hand them to the queue; back off on errors, stop on fatal ones. A source keeps at
most its pollers' count of requests open, fewer while the service says too many poll
(open_polls.py)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar

import structlog

from ..aws_errors import API_ERRORS, ErrorKind, classify, error_code, is_throttling
from ..exceptions import FatalWorkerError
from ..metrics import SourceMetrics
from ..redact import describe
from ..retry import POLL_BACKOFF, Again, Backoff, Retry, Stop, retrying
from .open_polls import OpenPolls
from .slots import Slots
from .task import Task

log = structlog.get_logger("sfn_worker.intake")


class FailureNotice:
    """A source's failed requests: said at once, then at most once per ``every`` seconds
    with how many failed since. In an outage every open request fails together and again
    on each backoff: 200 open polls made 1,400 lines in 30 s, one per failed poll."""

    def __init__(self, every: float = 60.0) -> None:
        self._every = every
        self._last = -math.inf
        self._count = 0

    def note(self, event: str, **fields: object) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last < self._every:
            return
        log.warning(event, failed_requests=self._count, per_seconds=self._every, **fields)
        self._last, self._count = now, 0


@dataclass(frozen=True)
class IntakeParts:
    """What every intake loop of one source shares: its slots, its open requests' target,
    the handler's readiness, the queue it hands tasks to, the process's stop events, where
    a fatal error goes, its source's metrics, its backoff and the notice of its failed
    requests."""

    slots: Slots
    open_polls: OpenPolls
    ready: Callable[[], Awaitable[None]]
    queue: asyncio.Queue[Task | None]
    stopping: asyncio.Event  # the shutdown began: tasks from now on are late
    stop_requested: asyncio.Event  # no request may start from now on
    on_fatal: Callable[[FatalWorkerError], None]
    metrics: SourceMetrics
    untraced: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    backoff: Backoff = POLL_BACKOFF
    failures: FailureNotice = field(default_factory=FailureNotice)


class IntakeLoop:
    """One intake loop. While ``holds_task()`` a request may be open or its tasks not yet
    queued: a loop in that state must never be cancelled, or tasks the service already
    handed out are lost until their timeout."""

    API: ClassVar[str]  # the long request, for errors and throttle notices
    NAME: ClassVar[str]  # its log context key, e.g. "poller"
    FAILED: ClassVar[str]  # the warning when a request failed and is retried
    MOST: ClassVar[int] = 1  # slots one request may fill
    # Codes by which the service says too many requests are open (fleet-wide): the source
    # lowers its open requests' target (open_polls.py) and says so once, not per request.
    TOO_MANY: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, number: int, parts: IntakeParts) -> None:
        self.number = number
        self._slots = parts.slots
        self._open_polls = parts.open_polls
        self._ready = parts.ready
        self._queue = parts.queue
        self._stopping = parts.stopping
        self._stop_requested = parts.stop_requested
        self._on_fatal = parts.on_fatal
        self._metrics = parts.metrics
        self._backoff = parts.backoff
        self._untraced = parts.untraced
        self._failures = parts.failures
        self._holds_task = False
        self._ticket = 0  # of the last request, from OpenPolls.enter
        # A request refused as one too many keeps its place under the source's target
        # through its backoff, so another loop does not take it and be refused at once.
        self._held = False

    def holds_task(self) -> bool:
        return self._holds_task

    def _no_more_requests(self) -> bool:
        # A stop request (a signal) ends polling at once, before the shutdown begins.
        return self._stop_requested.is_set() or self._stopping.is_set()

    async def _fetch(self, count: int) -> list[Task]:
        """One long request for at most ``count`` tasks."""
        raise NotImplementedError

    async def run(self) -> None:
        with structlog.contextvars.bound_contextvars(**{self.NAME: self.number}):
            try:
                await self._loop()
            finally:
                if self._held:
                    self._held = False
                    self._open_polls.leave(answered=False)

    async def _loop(self) -> None:
        while True:
            got = await retrying(
                self._take_and_fetch,
                backoff=self._backoff,
                judge=self._judge,
                throttle_api=self.API,
                on_retry=self._say_retry,
            )
            if got is None:  # stopping, or a fatal error
                return
            taken, tasks = got
            # The slots of the tasks now belong to them (their coroutines release them);
            # the rest go back (an empty poll, poison messages, duplicates).
            self._slots.give(taken - len(tasks))
            for task in tasks:
                await self._queue.put(task)
            self._holds_task = False

    async def _take_and_fetch(self) -> tuple[int, list[Task]] | None:
        """Free slots and one request for that many tasks; None once no more may be made."""
        if self._no_more_requests():
            return None
        taken = await self._slots.take(self.MOST)
        # A slot is not enough: the handler must be able to start (process mode backs off
        # after handler processes die), and the source's open requests must be under their
        # target. Both waits happen before the request, where cancelling is harmless.
        try:
            await self._ready()
            ticket = self._open_polls.keep() if self._held else None
            self._held = False
            self._ticket = await self._open_polls.enter() if ticket is None else ticket
        except BaseException:
            self._slots.give(taken)
            raise
        if self._no_more_requests():
            self._open_polls.leave(answered=False)
            self._slots.give(taken)
            return None
        self._holds_task = True
        try:
            tasks = await self._fetch(taken)
        except API_ERRORS as exc:
            self._holds_task = False
            if error_code(exc) in self.TOO_MANY:
                self._held = True
            else:
                self._open_polls.leave(answered=False)
            self._slots.give(taken)
            raise
        except BaseException:
            self._open_polls.leave(answered=False)
            raise
        self._open_polls.leave(answered=True)
        return taken, tasks

    def _judge(self, exc: BaseException) -> Again | Stop[None]:
        return Again.AFTER_BACKOFF if self._keep_going_after(exc) else Stop(None)

    def _say_retry(self, exc: BaseException, delay: float, retry: Retry) -> None:
        # Throttles go to the process's throttle notice, "too many" to OpenPolls' one line,
        # the rest to the source's notice: one line per outage, not one per open request.
        if not is_throttling(exc) and error_code(exc) not in self.TOO_MANY:
            self._failures.note(self.FAILED, error=describe(exc), retry_in=round(delay, 2))

    def _keep_going_after(self, exc: BaseException) -> bool:
        code = error_code(exc)
        self._metrics.poll_error(code)
        if code in self.TOO_MANY or is_throttling(exc):
            self._open_polls.too_many(code, self._ticket, say=code in self.TOO_MANY)
        # Only transient errors heal by waiting; anything else means this request can never work.
        if classify(exc) is not ErrorKind.TRANSIENT:
            self._on_fatal(FatalWorkerError(f"{self.API} failed: {describe(exc)}"))
            return False
        return True
