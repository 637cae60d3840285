"""The worker: pollers feed a bounded queue, task coroutines drain it, shutdown is ordered.

Shutdown, in order (each phase logs what it is waiting for):
1. stop polling: idle pollers are cancelled, open long polls are left to return; a task
   that arrives now is failed with ``Worker.Shutdown`` without being started;
2. drain: running and queued tasks finish, until the grace period minus the reserve;
3. cancel: what is still running is cancelled and answered with ``Worker.Shutdown``,
   using the reserve (sized by SFN_CONCURRENCY) for those SendTaskFailure calls;
4. hard deadline (end of the grace period): whatever is still pending is abandoned.
A second signal (``force_stop``) jumps to phase 3 with a short deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import structlog

from .aio import cancel_and_wait
from .client import SfnClients, open_clients
from .errors import FatalWorkerError, WorkerCrashed
from .handlers import Handler, HandlerInvoker, import_path, load_handler
from .loop_monitor import watch_loop_lag
from .metrics import Metrics
from .poller import Poller
from .procpool import PoolHealth
from .retry import POLL_BACKOFF, SEND_BACKOFF, Backoff
from .runner import ActivityTask, CancelReason, TaskRunner
from .sender import ResultSender
from .settings import Settings

log = structlog.get_logger("sfn_worker.worker")

# A long poll lasts up to 60 s; a grace this long lets every open poll return.
POLL_RETURN_SECONDS = 65.0
# After a second signal: time left for SendTaskFailure on everything still running.
FORCED_EXIT_SECONDS = 1.5
# After cancelling handlers at the end of the grace: how long to let them unwind before
# the worker stops waiting for them and answers their tokens anyway.
CANCEL_UNWIND_FRACTION = 0.25

ClientFactory = Callable[[Settings], AbstractAsyncContextManager[SfnClients]]


@dataclass(frozen=True)
class WorkerState:
    """A snapshot for health checks and metrics."""

    polling: bool
    stopping: bool
    pollers_alive: int
    running: int
    queued: int
    handlers_stuck: int
    processes: PoolHealth | None


class Worker:
    def __init__(
        self,
        settings: Settings,
        handler: Handler | None = None,
        *,
        client_factory: ClientFactory = open_clients,
        metrics: Metrics | None = None,
        poll_backoff: Backoff = POLL_BACKOFF,
        send_backoff: Backoff = SEND_BACKOFF,
    ) -> None:
        self.settings = settings
        self.handler = handler if handler is not None else load_handler(settings.handler)
        self.metrics = metrics or Metrics()
        self._client_factory = client_factory
        self._poll_backoff = poll_backoff
        self._send_backoff = send_backoff
        self._fatal: FatalWorkerError | None = None
        self._crash: BaseException | None = None
        self._crashed = asyncio.Event()
        self._force_stop = asyncio.Event()
        self._invoker: HandlerInvoker | None = None
        self._handlers_stuck = 0
        self._stopping: asyncio.Event | None = None
        self._pollers: list[Poller] = []
        self._poller_tasks: list[asyncio.Task[None]] = []
        self._work_tasks: set[asyncio.Task[None]] = set()
        self._runner: TaskRunner | None = None
        self._queue: asyncio.Queue[ActivityTask | None] | None = None
        self._started = False
        # Set whenever a task starts or ends (for ECS task protection).
        self.tasks_changed = asyncio.Event()

    def in_flight(self) -> int:
        return len(self._runner.running) if self._runner else 0

    def state(self) -> WorkerState:
        stopping = self._stopping is not None and self._stopping.is_set()
        return WorkerState(
            polling=self._started and not stopping,
            stopping=stopping,
            pollers_alive=sum(1 for task in self._poller_tasks if not task.done()),
            running=self.in_flight(),
            queued=self._queue.qsize() if self._queue else 0,
            handlers_stuck=self._handlers_stuck,
            processes=self._invoker.process_health() if self._invoker else None,
        )

    async def run(self, stop: asyncio.Event, force_stop: asyncio.Event | None = None) -> None:
        """Work tasks until ``stop`` is set, then shut down in order.

        Raises FatalWorkerError (after the same orderly shutdown) when the worker cannot go on.
        """
        settings = self.settings
        self._force_stop = force_stop = force_stop or asyncio.Event()
        self._stopping = stopping = asyncio.Event()
        fatal_event = asyncio.Event()

        def on_fatal(error: FatalWorkerError) -> None:
            if self._fatal is None:
                self._fatal = error
                log.error("fatal error; stopping the worker", error=str(error))
            fatal_event.set()

        self._invoker = invoker = HandlerInvoker(
            self.handler,
            settings.handler_mode,
            settings.concurrency,
            on_process_death=self.metrics.handler_process_deaths.inc,
        )
        try:
            async with self._client_factory(settings) as clients:
                slots = asyncio.Semaphore(settings.concurrency)
                queue: asyncio.Queue[ActivityTask | None] = asyncio.Queue(
                    settings.effective_queue_size
                )
                self._queue = queue
                self._runner = runner = TaskRunner(
                    client=clients.calls,
                    invoker=invoker,
                    sender=ResultSender(clients.calls, self.metrics, self._send_backoff),
                    metrics=self.metrics,
                    worker_name=settings.worker_name,
                    activity_arn=settings.activity_arn,
                    heartbeat_seconds=settings.heartbeat_seconds,
                    shutdown_started=stopping,
                    tasks_changed=self.tasks_changed,
                    heartbeat_backoff=self._send_backoff,
                )
                self._pollers = [
                    Poller(
                        number,
                        client=clients.polls,
                        activity_arn=settings.activity_arn,
                        worker_name=settings.worker_name,
                        slots=slots,
                        ready=invoker.wait_ready,
                        queue=queue,
                        stopping=stopping,
                        on_fatal=on_fatal,
                        metrics=self.metrics,
                        backoff=self._poll_backoff,
                    )
                    for number in range(settings.pollers)
                ]
                async with asyncio.TaskGroup() as group:
                    self._poller_tasks = [
                        group.create_task(self._guard(p.run(), "poller")) for p in self._pollers
                    ]
                    dispatcher = group.create_task(
                        self._guard(self._dispatch(group, queue, slots, runner), "dispatcher")
                    )
                    monitor = group.create_task(
                        self._guard(watch_loop_lag(self.metrics), "loop monitor")
                    )
                    self._started = True
                    log.info(
                        "worker started",
                        activity=settings.activity_arn,
                        pollers=settings.pollers,
                        concurrency=settings.concurrency,
                        heartbeat_seconds=settings.heartbeat_seconds,
                        handler=import_path(self.handler),
                        handler_mode=invoker.mode.value,
                    )
                    if settings.shutdown_grace_seconds < POLL_RETURN_SECONDS:
                        log.info(
                            "note: long polls open at shutdown may outlast the grace period",
                            grace_seconds=settings.shutdown_grace_seconds,
                            hint="SFN_SHUTDOWN_GRACE_SECONDS >= 65 (and ECS stopTimeout above "
                            "it) lets every open poll return before exit",
                        )
                    await _wait_any(stop, fatal_event, self._crashed)
                    await self._shutdown(stopping, force_stop, queue, dispatcher, runner)
                    await cancel_and_wait(monitor)
        finally:
            await invoker.aclose()
        if self._crash is not None:
            raise WorkerCrashed(f"internal error: {self._crash!r}") from self._crash
        if self._fatal is not None:
            raise self._fatal

    async def _guard(self, work: Coroutine[Any, Any, None], part: str) -> None:
        """An exception out of the worker's own machinery must not end the process silently,
        nor (through the task group) cancel open polls and running tasks: log it, then stop
        the way a second signal does, answering what runs."""
        try:
            await work
        except Exception as exc:
            log.exception("internal error in the worker; stopping", part=part)
            if self._crash is None:
                self._crash = exc
            self._crashed.set()
            self._force_stop.set()  # fail what runs now, as after a second signal

    async def _dispatch(
        self,
        group: asyncio.TaskGroup,
        queue: asyncio.Queue[ActivityTask | None],
        slots: asyncio.Semaphore,
        runner: TaskRunner,
    ) -> None:
        while (task := await queue.get()) is not None:
            self.metrics.queue_depth.set(queue.qsize())
            work = group.create_task(
                self._guard(self._work_then_free_slot(runner, task, slots), "task")
            )
            self._work_tasks.add(work)
            work.add_done_callback(self._work_tasks.discard)

    async def _work_then_free_slot(
        self, runner: TaskRunner, task: ActivityTask, slots: asyncio.Semaphore
    ) -> None:
        still_running: asyncio.Future[Any] | None = None
        try:
            still_running = await runner.work(task)
        finally:
            if still_running is None:
                slots.release()
            else:
                self._hold_slot_until_done(still_running, slots)

    def _hold_slot_until_done(self, handler: asyncio.Future[Any], slots: asyncio.Semaphore) -> None:
        """A slot is a handler that can run: one that ignored cancellation keeps its slot
        (and its thread) until it returns, so a new task never waits behind it."""
        self._handlers_stuck += 1
        self.metrics.handlers_stuck.set(self._handlers_stuck)
        log.warning(
            "handler still running after its task ended; its slot stays taken until it returns",
            handlers_stuck=self._handlers_stuck,
        )

        def returned(_: asyncio.Future[Any]) -> None:
            self._handlers_stuck -= 1
            self.metrics.handlers_stuck.set(self._handlers_stuck)
            slots.release()

        handler.add_done_callback(returned)

    async def _shutdown(
        self,
        stopping: asyncio.Event,
        force_stop: asyncio.Event,
        queue: asyncio.Queue[ActivityTask | None],
        dispatcher: asyncio.Task[None],
        runner: TaskRunner,
    ) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        grace_deadline = loop.time() + settings.shutdown_grace_seconds
        drain_deadline = grace_deadline - settings.failure_reserve_seconds
        stopping.set()
        for record in runner.running.values():
            record.ctx.shutdown_requested.set()
        if self._invoker is not None:
            self._invoker.notify_shutdown()

        # Phase 1: stop polling. Only pollers without an open request may be cancelled.
        idle = [
            t for p, t in zip(self._pollers, self._poller_tasks, strict=True) if not p.holds_task
        ]
        for task in idle:
            task.cancel()
        log.info(
            "shutdown: polling stopped",
            open_polls=len(self._poller_tasks) - len(idle),
            running=len(runner.running),
            grace_seconds=settings.shutdown_grace_seconds,
        )

        async def pollers_then_dispatcher() -> None:
            await asyncio.wait(self._poller_tasks)
            await queue.put(None)
            await dispatcher

        closing = asyncio.create_task(pollers_then_dispatcher())

        # Phase 2: drain until the grace period (minus the reserve) is over.
        if await self._wait_all(closing, drain_deadline, force_stop):
            log.info("shutdown: all tasks answered and all polls returned")
            return

        # Phase 3: cancel what is left and answer each token with Worker.Shutdown.
        forced = force_stop.is_set()
        hard_deadline = grace_deadline
        if forced:
            hard_deadline = min(hard_deadline, loop.time() + FORCED_EXIT_SECONDS)
        reason = "second signal" if forced else "grace period over"
        await self._cancel_running(runner, closing, hard_deadline, reason)

        # Phase 4: until the hard deadline, late tokens are failed and open polls may return.
        # A second signal now shortens the deadline.
        drained = await self._wait_all(closing, hard_deadline, None if forced else force_stop)
        if not drained and not forced and force_stop.is_set():
            hard_deadline = min(hard_deadline, loop.time() + FORCED_EXIT_SECONDS)
            await self._cancel_running(runner, closing, hard_deadline, "second signal")
            await self._wait_all(closing, hard_deadline, None)
        await self._abandon_what_is_left(runner, closing, dispatcher)

    async def _cancel_running(
        self, runner: TaskRunner, closing: asyncio.Task[None], hard_deadline: float, reason: str
    ) -> None:
        loop = asyncio.get_running_loop()
        runner.refuse_new_work = True
        runner.send_deadline = hard_deadline
        leftovers = list(runner.running.values())
        if not leftovers:
            return
        log.warning("shutdown: cancelling running tasks", reason=reason, count=len(leftovers))
        for record in leftovers:
            record.cancel(CancelReason.SHUTDOWN)
        unwind_deadline = loop.time() + (hard_deadline - loop.time()) * CANCEL_UNWIND_FRACTION
        if await self._wait_all(closing, unwind_deadline, None):
            return
        stubborn = [
            r for r in runner.running.values() if r.handler and not r.handler.finished.done()
        ]
        if stubborn:
            log.warning(
                "shutdown: handlers ignore cancellation; answering their tokens anyway",
                count=len(stubborn),
            )
        for record in runner.running.values():
            record.abandon()

    async def _abandon_what_is_left(
        self, runner: TaskRunner, closing: asyncio.Task[None], dispatcher: asyncio.Task[None]
    ) -> None:
        open_polls = sum(1 for p in self._pollers if p.holds_task)
        unanswered = len(runner.running)
        if not open_polls and not unanswered and closing.done():
            log.info("shutdown: every task answered")
            return
        if unanswered:
            log.error(
                "shutdown: deadline reached with tasks unanswered; they wait for their timeout",
                unanswered=unanswered,
            )
        if open_polls:
            log.warning(
                "shutdown: deadline reached with long polls still open; closing them",
                open_polls=open_polls,
                hint="a task Step Functions hands to a closed poll waits for its timeout; "
                "a grace of 65 s or more (ECS stopTimeout above it) lets every poll return",
            )
        for task in (*self._poller_tasks, dispatcher, *self._work_tasks):
            task.cancel()
        await cancel_and_wait(closing)

    async def _wait_all(
        self, closing: asyncio.Task[None], deadline: float, force_stop: asyncio.Event | None
    ) -> bool:
        """Wait until pollers, dispatcher and every task are done; False at the deadline."""
        loop = asyncio.get_running_loop()
        while True:
            pending: set[asyncio.Future[None]] = {t for t in self._work_tasks if not t.done()}
            if not closing.done():
                pending.add(closing)
            if not pending:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0 or (force_stop is not None and force_stop.is_set()):
                return False
            async with _waiting_for(force_stop) as forced:
                everything = asyncio.ensure_future(asyncio.wait(pending))
                try:
                    await asyncio.wait(
                        {everything, *([forced] if forced else [])},
                        timeout=remaining,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    everything.cancel()


async def _wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


@contextlib.asynccontextmanager
async def _waiting_for(event: asyncio.Event | None) -> AsyncIterator[asyncio.Task[bool] | None]:
    if event is None:
        yield None
        return
    waiter = asyncio.create_task(event.wait())
    try:
        yield waiter
    finally:
        waiter.cancel()
