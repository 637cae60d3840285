"""The process: AWS clients, the app's lifespan, one ActivityWorker per activity, the loop
monitor and the ordered shutdown across all of them.

In order: activity settings are resolved (configuration errors before anything else),
tracing starts, clients open, activity names become ARNs, the lifespan is entered, every
activity starts polling; on ``stop`` the shutdown runs (runtime/shutdown.py); handler pools
close; the lifespan exits after the last answer; the clients close; tracing exports what is
left within the rest of the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from ..aio import cancel_and_wait
from ..app import App, import_path
from ..bulkhead import Accessories, Accessory, AccessorySnapshot
from ..config import SourceConfig, resolve
from ..context import NO_STATE
from ..exceptions import FatalWorkerError, LifespanFailed, WorkerCrashed
from ..logs import report_to as report_logs_to
from ..metrics import Metrics
from ..otel_config import check_otel_environment
from ..retry import POLL_BACKOFF, SEND_BACKOFF, Backoff
from ..settings import HEARTBEAT_RATE_WARNING_PER_SECOND, MetricsOutput, Settings
from ..streams import STDOUT_BUFFER_BYTES, OutputStream, open_stream
from ..tasks.answering import AnswerGate
from ..tasks.kinds import worker_class
from ..tasks.source_worker import (
    AppParts,
    ProcessLink,
    SharedParts,
    SourceClients,
    SourceParts,
    SourceState,
    SourceWorker,
)
from ..tracing import NO_TRACING, Tracing, setup_tracing
from .client import SfnClients, open_clients
from .credentials import keep_fresh, refreshes_ahead
from .emf import EmfPublisher
from .lifespan import Lifespan
from .loop_monitor import watch_loop_lag
from .names import resolve_names
from .shutdown import Shutdown

log = structlog.get_logger("sfn_worker.runtime")
T = TypeVar("T")

ClientFactory = Callable[[Sequence[SourceConfig]], AbstractAsyncContextManager[SfnClients]]

# With tracing on, the end of the grace is kept for exporting the last spans (and handler
# processes' spans): at most this long, and at most this share of the grace.
TRACING_RESERVE_SECONDS = 1.0
TRACING_RESERVE_FRACTION = 0.1


def tracing_reserve_seconds(grace_seconds: float) -> float:
    return min(TRACING_RESERVE_SECONDS, grace_seconds * TRACING_RESERVE_FRACTION)


@dataclass(frozen=True)
class RuntimeState:
    """A snapshot for health checks and metrics."""

    polling: bool
    stopping: bool
    sources: tuple[SourceState, ...]
    accessories: Mapping[str, AccessorySnapshot]

    def by_name(self) -> list[tuple[str, SourceState]]:
        """Each source under its name, or ``<name> (<kind>)`` when sources of two kinds
        share it (the single form's activity and queue may): one key would hide one."""
        names = Counter(s.name for s in self.sources)
        return [(s.name if names[s.name] == 1 else f"{s.name} ({s.kind})", s) for s in self.sources]


class Runtime:
    def __init__(
        self,
        app: App,
        settings: Settings,
        *,
        client_factory: ClientFactory = open_clients,
        metrics: Metrics | None = None,
        poll_backoff: Backoff = POLL_BACKOFF,
        send_backoff: Backoff = SEND_BACKOFF,
        environ: Mapping[str, str] | None = None,
        configs: Sequence[SourceConfig] | None = None,
    ) -> None:
        """``configs``: the sources, resolved already (``sfn-worker once``); by default
        those the app registers, with their settings."""
        self.app = app
        self.settings = settings
        # Configuration errors surface here, before any client or poll.
        environ = os.environ if environ is None else environ
        self.configs = list(configs) if configs is not None else resolve(app, settings, environ)
        check_otel_environment(environ, emf=settings.metrics is MetricsOutput.EMF)
        self.metrics = metrics or Metrics()
        # What runs beside the task path, each behind a bulkhead (bulkhead.py).
        self.accessories = Accessories(self.metrics)
        # Set whenever a task starts or ends (for ECS task protection).
        self.tasks_changed = asyncio.Event()
        # Terminal calls of every source, on the wire at once; their measured rate sizes
        # the shutdown's failure reserve.
        self.answers = AnswerGate()
        self.metrics.answer_rate.set_function(self.answers.answers_per_second)
        if client_factory is open_clients:
            wait = settings.credentials_wait_seconds
            client_factory = functools.partial(open_clients, credentials_wait_seconds=wait)
        self._client_factory = client_factory
        self._backoffs = (poll_backoff, send_backoff)
        self._sources: list[SourceWorker] = []
        self._stopping = asyncio.Event()
        # Set once every source polls (tests and embedders wait for it).
        self.started = asyncio.Event()
        self._fatal: FatalWorkerError | None = None
        self._fatal_event = asyncio.Event()
        self._crash: BaseException | None = None
        self._crashed = asyncio.Event()
        self._stop = asyncio.Event()
        self._force_stop = asyncio.Event()
        self._tracing: Tracing = NO_TRACING
        # Loop time of the first stop request (a signal, or a fatal error or a defect).
        self._stop_requested_at: float | None = None
        self._stdout: OutputStream | None = None

    # -- what operations ask -----------------------------------------------------------------
    def sources(self) -> Sequence[SourceWorker]:
        """The source workers, once serving (what the metrics outputs read)."""
        return self._sources

    def in_flight(self) -> int:
        return sum(s.in_flight() for s in self._sources)

    def state(self) -> RuntimeState:
        stopping = self._stopping.is_set()
        return RuntimeState(
            polling=self.started.is_set() and not stopping,
            stopping=stopping,
            sources=tuple(s.state() for s in self._sources),
            accessories=self.accessories.snapshot(),
        )

    def report(self) -> dict[str, object]:
        """What the worker holds, for a log line (SIGUSR1)."""
        state = self.state()
        return {
            "polling": state.polling,
            "stopping": state.stopping,
            "running": sum(s.running for s in state.sources),
            "sources": {
                name: {
                    "kind": s.kind,
                    "healthy": s.healthy,
                    "running": s.running,
                    "queued": s.queued,
                    "concurrency": s.concurrency,
                    "handlers_stuck": s.handlers_stuck,
                }
                for name, s in state.by_name()
            },
            "accessories": {name: a.state for name, a in state.accessories.items()},
        }

    # -- stopping ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop in order (a signal). From now on no poll starts; the grace period runs and
        the ordered shutdown follows at once."""
        if self._stop_requested_at is None:
            self._stop_requested_at = asyncio.get_running_loop().time()
        self._stop.set()

    def request_forced_stop(self) -> None:
        """Stop now (a second signal): what runs is answered within seconds."""
        self.request_stop()
        self._force_stop.set()

    def _time_left(self) -> float:
        """Seconds left of the grace period, which starts at the first stop request (a
        signal, a fatal error, a defect); before any, the tracing reserve. A second signal
        cuts it to that reserve."""
        grace = self.settings.shutdown_grace_seconds
        reserve = tracing_reserve_seconds(grace)
        if self._stop_requested_at is None:
            return reserve
        left = max(0.0, self._stop_requested_at + grace - asyncio.get_running_loop().time())
        return min(left, reserve) if self._force_stop.is_set() else left

    def _tracing_reserve(self) -> float:
        """The end of the grace kept for exporting the last spans, when tracing is on."""
        if not self._tracing.enabled:
            return 0.0
        return tracing_reserve_seconds(self.settings.shutdown_grace_seconds)

    # -- running -----------------------------------------------------------------------------
    async def run(
        self, stop: asyncio.Event | None = None, force_stop: asyncio.Event | None = None
    ) -> None:
        """Work tasks until asked to stop (``request_stop``, or ``stop`` set), then shut down
        in order. A stop before polling began ends the start-up instead: nothing is polled
        (a source given its task at start still answers it, late).

        Raises FatalWorkerError (after the same orderly shutdown) when the worker cannot go
        on, LifespanFailed when the lifespan fails (or is stopped) on entry, before any
        poll, WorkerCrashed after a defect in the worker itself.
        """
        self._tracing = setup_tracing(
            self.settings.trace_context_key, service_name=self.settings.metrics_service_name
        )
        followers = [
            asyncio.create_task(_follow(event, action))
            for event, action in ((stop, self.request_stop), (force_stop, self.request_forced_stop))
            if event is not None
        ]
        await asyncio.sleep(0)  # an event set already is followed before anything starts
        try:
            await self._run()
        finally:
            for follower in followers:
                follower.cancel()
            await self._close_tracing()
        if self._crash is not None:
            raise WorkerCrashed(f"internal error: {self._crash!r}") from self._crash
        if self._fatal is not None:
            raise self._fatal

    async def _run(self) -> None:
        # A source given its task at start (``once``) is served even after a stop: its task
        # arrives late and is answered Worker.Shutdown, not left to its timeout.
        holding = any(worker_class(c).holds_task_from_start for c in self.configs)
        if self._stop.is_set() and not holding:
            log.info("stopped before polling began")
            return
        async with contextlib.AsyncExitStack() as stack:
            opening = stack.enter_async_context(self._client_factory(self.configs))
            clients = await self._unless_stopped(opening, holding)
            if clients is None:
                log.info("stopped while waiting for AWS credentials; nothing was polled")
                return
            if refreshes_ahead(clients.credentials):
                fresh = self.accessories.supervise(
                    "credentials", functools.partial(keep_fresh, clients.credentials)
                )
                stack.push_async_callback(cancel_and_wait, asyncio.create_task(fresh))
            naming = resolve_names(
                self.configs, clients.session, clients.endpoint_url, clients.direct
            )
            configs = await self._unless_stopped(naming, holding)
            if configs is None:
                log.info("stopped while resolving activity names; nothing was polled")
                return
            lifespan = Lifespan(self.app)
            try:
                state = await self._enter(lifespan, holding)
                if not self._stop.is_set() or holding:
                    await self._serve(configs, clients, state)
            finally:
                await self._close_sources()
                await lifespan.exit(self._time_left() - self._tracing_reserve())

    async def _enter(self, lifespan: Lifespan, holding: bool) -> Any:
        """What the lifespan yields. A source holding its task serves it without the
        lifespan once stopped: the late task runs no handler."""
        if holding and self._stop.is_set():
            return NO_STATE
        try:
            return await lifespan.enter(self._stop.wait)
        except LifespanFailed:
            if holding and self._stop.is_set():
                return NO_STATE  # stopped while it started (cancelled): answer the task
            raise

    async def _unless_stopped(self, work: Coroutine[Any, Any, T], holding: bool) -> T | None:
        """``work``'s result, or None when a stop comes first (``work`` is cancelled). With
        a task held from the start, only a second signal or the end of the grace stop it."""
        running = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self._given_up() if holding else self._stop.wait())
        try:
            await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if running.done():
            return running.result()
        await cancel_and_wait(running)
        return None

    async def _given_up(self) -> None:
        """Start-up is abandoned after a stop only by a second signal or the grace's end."""
        await self._stop.wait()
        forced = asyncio.ensure_future(self._force_stop.wait())
        try:
            await asyncio.wait({forced}, timeout=self._time_left())
        finally:
            forced.cancel()

    async def _serve(
        self, configs: Sequence[SourceConfig], clients: SfnClients, state: Any
    ) -> None:
        poll_backoff, send_backoff = self._backoffs
        parts = SourceParts(
            SourceClients(clients.polls, clients.calls, clients.sqs_polls, clients.sqs),
            AppParts(
                self.settings.worker_name,
                state,
                self.app.middlewares,
                self.app.process_initializer,
            ),
            ProcessLink(
                stopping=self._stopping,
                stop_requested=self._stop,
                tasks_changed=self.tasks_changed,
                on_fatal=self._on_fatal,
                on_crash=self._on_crash,
            ),
            SharedParts(self.accessories, self._tracing, self.answers, poll_backoff, send_backoff),
        )
        self._sources = [self._worker(config, parts) for config in configs]
        accessories = self.accessories
        report_logs_to(accessories.get("logs"))  # stderr: lines dropped, or broken
        async with asyncio.TaskGroup() as group:
            runs = [group.create_task(source.run()) for source in self._sources]
            monitor = group.create_task(
                accessories.supervise("loop_monitor", lambda _: watch_loop_lag(self.metrics))
            )
            emf = None
            if self.settings.metrics is MetricsOutput.EMF:
                emf = group.create_task(accessories.supervise("emf", self._publish_emf))
            self.started.set()
            log_started(self._sources, self.settings)
            await _wait_any(self._stop, self._fatal_event, self._crashed)
            if self._stop_requested_at is None:  # a fatal error or a defect: stop now
                self._stop_requested_at = asyncio.get_running_loop().time()
            self._stopping.set()
            grace, kept = self._time_left(), self._tracing_reserve()
            await Shutdown(
                self._sources, runs, grace, self._force_stop, self.answers, kept_seconds=kept
            ).run()
            await cancel_and_wait(monitor)
            if emf is not None:
                await cancel_and_wait(emf)  # its last record covers the shutdown

    async def _close_sources(self) -> None:
        """Handler pools end their processes; those export their last spans in the first
        half of what is left, so the worker's own spans have the second."""
        deadline = asyncio.get_running_loop().time() + self._time_left() / 2
        for source in self._sources:
            await source.aclose(deadline)

    async def _close_tracing(self) -> None:
        timeout = self._time_left()
        if not await self._tracing.close(timeout):
            self.accessories.get("tracing").failed(
                f"spans not exported within the {timeout:.1f} s left of the grace "
                "(collector unreachable or slow); dropped at exit",
                stopped=True,
            )

    def _worker(self, config: SourceConfig, parts: SourceParts) -> SourceWorker:
        metrics = self.metrics.for_source(config.name, config.kind)
        return worker_class(config).serving(config, parts, metrics)

    async def _publish_emf(self, accessory: Accessory) -> None:
        settings = self.settings
        if self._stdout is None:  # one writer for stdout, kept across restarts
            self._stdout = open_stream(1, "stdout", limit_bytes=STDOUT_BUFFER_BYTES)
            self._stdout.report_to(
                accessory.drop, lambda error: accessory.failed(error, stopped=True)
            )
        publisher = EmfPublisher(
            self.metrics,
            self.sources,
            namespace=settings.metrics_namespace,
            service_name=settings.metrics_service_name,
            output=self._stdout,
        )
        await publisher.run(settings.metrics_interval_seconds)

    def _on_fatal(self, error: FatalWorkerError) -> None:
        if self._fatal is None:
            self._fatal = error
            log.error("fatal error; stopping the worker", error=str(error))
        self._fatal_event.set()

    def _on_crash(self, error: BaseException, part: str) -> None:
        """A defect in the worker's own code must not end the process silently: log it,
        then stop the way a second signal does, answering what runs."""
        log.error("internal error in the worker; stopping", part=part, exc_info=error)
        if self._crash is None:
            self._crash = error
        self._crashed.set()
        self._force_stop.set()


def log_started(sources: Sequence[SourceWorker], settings: Settings) -> None:
    for source in sources:
        config = source.config
        log.info(
            "worker started",
            source=config.name,
            kind=config.kind,
            **config.started_fields(),
            pollers=config.pollers,
            concurrency=config.concurrency,
            heartbeat_seconds=config.heartbeat_seconds,
            handler=import_path(config.handler),
            handler_mode=source.handler_mode,
        )
        if config.heartbeat_rate_per_second > HEARTBEAT_RATE_WARNING_PER_SECOND:
            log.warning(
                "heartbeat rate may exceed the account's SendTaskHeartbeat quota",
                source=config.name,
                kind=config.kind,
                heartbeats_per_second=round(config.heartbeat_rate_per_second),
                hint=f"raise SFN_HEARTBEAT_SECONDS or lower SFN_CONCURRENCY ({config.key})",
            )
    # Only kinds that hold long polls open (activities, queues) ask for a longer grace.
    poll_return = max((source.open_poll_seconds for source in sources), default=0.0)
    if settings.shutdown_grace_seconds < poll_return:
        log.info(
            "note: long polls open at shutdown may outlast the grace period",
            grace_seconds=settings.shutdown_grace_seconds,
            hint=f"SFN_SHUTDOWN_GRACE_SECONDS >= {poll_return:g} (and ECS stopTimeout above "
            "it) lets every open poll return before exit",
        )


async def _follow(event: asyncio.Event, action: Callable[[], None]) -> None:
    await event.wait()
    action()


async def _wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
