"""What serves one source of tasks (an activity or a callback queue): slots, intake loops
(pollers or receivers), the bounded queue, the dispatcher, task coroutines.

``run()`` takes and works tasks until the process stops it, then returns once every open
poll has returned and every task taken has ended. The process (runtime/shutdown.py) drives
the shutdown through the methods below; a source never looks at other sources. Subclasses
say how tasks come in (tasks/sources/activity/worker.py, tasks/sources/queue/worker.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self

import structlog

from ..app import Middleware
from ..aws import SFNClient, SQSClient
from ..bulkhead import Accessories
from ..config import SourceConfig
from ..exceptions import FatalWorkerError
from ..metrics import SourceMetrics
from ..retry import POLL_BACKOFF, SEND_BACKOFF, Backoff
from ..tracing import NO_TRACING, Tracing
from .answering import AnswerGate
from .handlers.invoker import HandlerInvoker
from .handlers.procpool import PoolHealth
from .intake import IntakeParts
from .open_polls import OpenPolls
from .runner import TaskRunner, TaskSettings
from .sender import ResultSender
from .slots import Slots
from .source import TaskSource
from .task import Task

log = structlog.get_logger("sfn_worker.source")

OnCrash = Callable[[BaseException, str], None]


def too_many_stuck(stuck: int, concurrency: int) -> bool:
    """Handlers that ignored cancellation hold more than half the slots: the worker can
    no longer do what it is sized for, and only a new container gives the slots back."""
    return stuck * 2 > concurrency


class Intake(Protocol):
    """A poller (GetActivityTask) or a receiver (SQS ReceiveMessage)."""

    async def run(self) -> None: ...

    def holds_task(self) -> bool:
        """True while a request is open or its tasks are not queued yet: never cancel then."""
        ...


@dataclass(frozen=True)
class Place:
    """Where the worker runs, for sources named without their full address (an activity
    by name): the AWS configuration's partition and region, the credentials' account."""

    partition: str
    region: str
    account: str


@dataclass(frozen=True)
class SourceState:
    """A snapshot for health checks; ``healthy`` is the source's kind's judgement."""

    kind: str
    name: str
    healthy: bool
    pollers: int
    pollers_alive: int
    concurrency: int
    running: int
    queued: int
    handlers_stuck: int
    processes: PoolHealth | None
    group: str | None = None  # SourceWorker.health_group


@dataclass(frozen=True)
class SourceClients:
    """The process's AWS clients: Step Functions long polls and quick calls; the same two
    for SQS when a source needs them."""

    polls: SFNClient
    calls: SFNClient
    sqs_polls: SQSClient | None = None  # ReceiveMessage only (20 s long polls)
    sqs: SQSClient | None = None  # the other SQS calls (quick)


@dataclass(frozen=True)
class AppParts:
    """What the app lends every task: the worker's name, the lifespan's state, middleware
    and the handler processes' initialiser."""

    worker_name: str
    state: Any = None
    middlewares: Sequence[Middleware] = ()
    process_init: Callable[[], Any] | None = None


@dataclass(frozen=True)
class ProcessLink:
    """How a source hears of the process and tells it: its stop events, the tasks-changed
    signal (ECS task protection), and where a fatal error or a defect goes."""

    stopping: asyncio.Event  # the shutdown began
    stop_requested: asyncio.Event  # a stop was asked for: no request may start from now on
    tasks_changed: asyncio.Event
    on_fatal: Callable[[FatalWorkerError], None]
    on_crash: OnCrash


@dataclass(frozen=True)
class SharedParts:
    """What every source shares and none owns: the accessories' bulkhead, tracing, the
    process-wide answer gate and the backoffs."""

    accessories: Accessories  # housekeeping beside the task path reports here
    tracing: Tracing = NO_TRACING
    # Terminal calls on the wire at once, for every source (they share the calls' pool).
    answers: AnswerGate = field(default_factory=AnswerGate)
    poll_backoff: Backoff = POLL_BACKOFF
    send_backoff: Backoff = SEND_BACKOFF


@dataclass(frozen=True)
class SourceParts:
    """What the process lends every source."""

    clients: SourceClients
    app: AppParts
    process: ProcessLink
    shared: SharedParts


class SourceWorker:
    # How long a request of this kind left open at shutdown may take to return (it is never
    # cancelled: the service may hand it a task); a shorter grace is worth a note at start.
    open_poll_seconds: ClassVar[float] = 0.0
    # The /healthz key this kind was also listed under before ``sources`` (kept because
    # operators' probes read it); None: listed under ``sources`` only.
    health_group: ClassVar[str | None] = None
    # Given its task when the process starts (``once``): a stop during start-up must not
    # end it unserved, or that task waits for its timeout (runtime.py serves it late).
    holds_task_from_start: ClassVar[bool] = False

    def __init__(
        self,
        config: SourceConfig,
        parts: SourceParts,
        metrics: SourceMetrics,
        source: TaskSource,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.source = source
        self._parts = parts
        self._invoker = HandlerInvoker(
            config.handler,
            config.handler_mode,
            config.concurrency,
            middlewares=parts.app.middlewares,
            process_init=parts.app.process_init,
            max_tasks_per_child=config.max_tasks_per_child,
            processes=config.processes,
            trace_carrier=parts.shared.tracing.carrier,
            on_process_death=metrics.handler_process_deaths.inc,
        )
        self._slots = Slots(config.concurrency)
        # One request per free slot, at most the pollers (each poller holds one at a time).
        self._open_polls = OpenPolls(config.pollers)
        self._queue: asyncio.Queue[Task | None] = asyncio.Queue(config.effective_queue_size)
        self._runner = TaskRunner(
            TaskSettings(
                worker_name=parts.app.worker_name,
                source_name=config.name,
                heartbeat_seconds=config.heartbeat_seconds,
                heartbeat_mode=config.heartbeat_mode,
                state=parts.app.state,
                tracing=parts.shared.tracing,
            ),
            client=parts.clients.calls,
            invoker=self._invoker,
            sender=ResultSender(
                parts.clients.calls, metrics, parts.shared.send_backoff, parts.shared.answers
            ),
            metrics=metrics,
            stopping=parts.process.stopping,
            tasks_changed=parts.process.tasks_changed,
            on_task_end=self._free_slot,
            on_crash=lambda exc: parts.process.on_crash(exc, f"{config.name} task"),
            source=source,
            heartbeat_backoff=parts.shared.send_backoff,
        )
        # Made by run(): a subclass's constructor has nothing to prepare before super().
        self._intakes: list[Intake] = []
        self._intake_tasks: list[asyncio.Task[None]] = []
        self._handlers_stuck = 0
        metrics.concurrency.set(config.concurrency)
        # Read when scraped, not updated per task.
        metrics.tasks_in_flight.set_function(self._runner.running_count)
        metrics.queue_depth.set_function(self._queue.qsize)

    @classmethod
    def serving(cls, config: SourceConfig, parts: SourceParts, metrics: SourceMetrics) -> Self:
        """The worker for ``config`` (of this kind: tasks/kinds.py picks the class)."""
        raise NotImplementedError

    @classmethod
    async def probe(
        cls, config: SourceConfig, calls: SFNClient, sqs: SQSClient | None
    ) -> list[str]:
        """``sfn-worker check``: ask the service that the source exists (API errors
        propagate); notes worth printing under it."""
        return []

    @classmethod
    def needs_place(cls, config: SourceConfig) -> bool:
        """Whether ``config`` is only complete once ``placed`` (asking STS costs a call)."""
        return False

    @classmethod
    def placed(cls, config: SourceConfig, place: Place) -> SourceConfig:
        """``config`` with the address it names only by name, now known (runtime/names.py)."""
        return config

    def _make_intakes(self, parts: IntakeParts) -> list[Intake]:
        """How this source's tasks come in: its intake loops (pollers, receivers...)."""
        raise NotImplementedError

    def _intake_parts(self) -> IntakeParts:
        parts = self._parts
        return IntakeParts(
            slots=self._slots,
            open_polls=self._open_polls,
            ready=self._invoker.wait_ready,
            queue=self._queue,
            stopping=parts.process.stopping,
            stop_requested=parts.process.stop_requested,
            on_fatal=parts.process.on_fatal,
            metrics=self.metrics,
            untraced=parts.shared.tracing.untraced,
            backoff=parts.shared.poll_backoff,
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def handler_mode(self) -> str:
        return self._invoker.mode.value

    # -- running -----------------------------------------------------------------------------
    async def run(self) -> None:
        self._intakes = self._make_intakes(self._intake_parts())
        with structlog.contextvars.bound_contextvars(source=self.name, kind=self.source.kind):
            async with asyncio.TaskGroup() as group:
                self._intake_tasks = [
                    group.create_task(self._guard(intake.run(), "intake"))
                    for intake in self._intakes
                ]
                group.create_task(self._guard(self._dispatch(group), "dispatcher"))
                await self._parts.process.stopping.wait()
                await asyncio.wait(self._intake_tasks)
                await self._queue.put(None)  # after the last task an intake queued
            # The task group returns once the dispatcher and every task it started are done.

    async def _dispatch(self, group: asyncio.TaskGroup) -> None:
        while (task := await self._queue.get()) is not None:
            group.create_task(self._runner.work(task))

    async def _guard(self, work: Coroutine[Any, Any, None], part: str) -> None:
        """An exception out of this machinery goes to the process (which stops in order),
        never through the task group, which would cancel open polls and running tasks."""
        try:
            await work
        except Exception as exc:  # noqa: BLE001 - on_crash logs it and stops the worker
            self._parts.process.on_crash(exc, f"{self.name} {part}")

    def _free_slot(self, still_running: asyncio.Future[Any] | None) -> None:
        if still_running is None:
            self._slots.give()
        else:
            self._hold_slot_until_done(still_running)

    def _hold_slot_until_done(self, handler: asyncio.Future[Any]) -> None:
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
            self._slots.give()

        handler.add_done_callback(returned)

    # -- what the process asks ---------------------------------------------------------------
    def healthy(self) -> bool:
        """Every intake loop alive and at most half the slots held by stuck handlers; a
        kind whose intake ends by design (``once``) says otherwise."""
        return self._intakes_alive() == self.config.pollers and not self._too_many_stuck()

    def _too_many_stuck(self) -> bool:
        return too_many_stuck(self._handlers_stuck, self.config.concurrency)

    def _intakes_alive(self) -> int:
        return sum(1 for task in self._intake_tasks if not task.done())

    def state(self) -> SourceState:
        return SourceState(
            kind=self.source.kind,
            name=self.name,
            healthy=self.healthy(),
            group=self.health_group,
            pollers=self.config.pollers,
            pollers_alive=self._intakes_alive(),
            concurrency=self.config.concurrency,
            running=self._runner.running_count(),
            queued=self._queue.qsize(),
            handlers_stuck=self._handlers_stuck,
            processes=self._invoker.process_health(),
        )

    def in_flight(self) -> int:
        return self._runner.running_count()

    def open_polls(self) -> int:
        return sum(1 for intake in self._intakes if intake.holds_task())

    def stop_polling(self) -> None:
        """Shutdown, phase 1: handlers hear of it; intakes waiting for a slot are cancelled;
        an open request is never cancelled (the service may hand it a task at any moment).
        A source that can release tasks releases those not started yet."""
        self._runner.request_shutdown()
        self._invoker.notify_shutdown()
        if not self.source.answers_at_shutdown:
            self._runner.stop_starting()
        for intake, task in zip(self._intakes, self._intake_tasks, strict=True):
            if not intake.holds_task():
                task.cancel()

    def cancel_running(self, send_deadline: float) -> int:
        """Shutdown, phase 3: fail what is not started, cancel what runs; answers are due by
        ``send_deadline``. Returns how many tasks were running."""
        self._runner.stop_starting(send_deadline)
        return self._runner.cancel_running()

    def leave_unanswered(self) -> int:
        """Shutdown, the end of the grace: how many tokens this source leaves unanswered
        (still in flight, or cut off by the deadline); counted in its metric."""
        return self._runner.leave_unanswered()

    def abandon_running(self) -> int:
        """Stop waiting for handlers; returns how many ignore cancellation."""
        return self._runner.abandon_running()

    async def aclose(self, deadline: float | None = None) -> None:
        """After the shutdown; ``deadline`` (loop time) bounds what handler processes may
        still export before they end."""
        await self._invoker.aclose(deadline)
        await self.source.aclose()
