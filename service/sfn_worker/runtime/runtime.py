"""The process: AWS clients, the app's lifespan, one ActivityWorker per activity, the loop
monitor and the ordered shutdown across all of them.

In order: activity settings are resolved (configuration errors before anything else),
clients open, activity names become ARNs, the lifespan is entered, every activity starts
polling; on ``stop`` the shutdown runs (runtime/shutdown.py); handler pools close; the
lifespan exits after the last answer; the clients close.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import structlog

from ..aio import cancel_and_wait
from ..app import App, import_path
from ..bulkhead import Accessories, Accessory, AccessorySnapshot
from ..config import ActivityConfig, CallbackQueueConfig, SourceConfig, resolve
from ..errors import FatalWorkerError, WorkerCrashed
from ..logs import report_to as report_logs_to
from ..metrics import Metrics
from ..retry import POLL_BACKOFF, SEND_BACKOFF, Backoff
from ..settings import HEARTBEAT_RATE_WARNING_PER_SECOND, MetricsOutput, Settings
from ..streams import STDOUT_BUFFER_BYTES, OutputStream, open_stream
from ..tasks.activity import ActivityWorker
from ..tasks.callback import CallbackQueueWorker
from ..tasks.source_worker import SourceParts, SourceState, SourceWorker
from ..tracing import setup_tracing
from .client import SfnClients, open_clients
from .emf import EmfPublisher
from .lifespan import lifespan
from .loop_monitor import watch_loop_lag
from .names import resolve_names
from .shutdown import POLL_RETURN_SECONDS, Shutdown

log = structlog.get_logger("sfn_worker.runtime")

ClientFactory = Callable[[Sequence[SourceConfig]], AbstractAsyncContextManager[SfnClients]]


@dataclass(frozen=True)
class RuntimeState:
    """A snapshot for health checks and metrics."""

    polling: bool
    stopping: bool
    sources: tuple[SourceState, ...]
    accessories: Mapping[str, AccessorySnapshot]


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
    ) -> None:
        self.app = app
        self.settings = settings
        # Configuration errors surface here, before any client or poll.
        self.configs = resolve(app, settings, os.environ if environ is None else environ)
        self.metrics = metrics or Metrics()
        # What runs beside the task path, each behind a bulkhead (bulkhead.py).
        self.accessories = Accessories(self.metrics)
        # Set whenever a task starts or ends (for ECS task protection).
        self.tasks_changed = asyncio.Event()
        self._client_factory = client_factory
        self._backoffs = (poll_backoff, send_backoff)
        self._sources: list[SourceWorker] = []
        self._stopping = asyncio.Event()
        self._started = False
        self._fatal: FatalWorkerError | None = None
        self._fatal_event = asyncio.Event()
        self._crash: BaseException | None = None
        self._crashed = asyncio.Event()
        self._force_stop = asyncio.Event()
        self._stdout: OutputStream | None = None

    # -- what operations ask -----------------------------------------------------------------
    def in_flight(self) -> int:
        return sum(s.in_flight() for s in self._sources)

    def state(self) -> RuntimeState:
        stopping = self._stopping.is_set()
        return RuntimeState(
            polling=self._started and not stopping,
            stopping=stopping,
            sources=tuple(s.state() for s in self._sources),
            accessories=self.accessories.snapshot(),
        )

    # -- running -----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, force_stop: asyncio.Event | None = None) -> None:
        """Work tasks until ``stop`` is set, then shut down in order.

        Raises FatalWorkerError (after the same orderly shutdown) when the worker cannot go
        on, LifespanFailed when the lifespan fails on entry (before any poll), WorkerCrashed
        after a defect in the worker itself.
        """
        self._force_stop = force_stop = force_stop or asyncio.Event()
        async with self._client_factory(self.configs) as clients:
            configs = await resolve_names(self.configs, clients.session, clients.endpoint_url)
            async with lifespan(self.app) as state:
                try:
                    await self._serve(configs, clients, state, stop, force_stop)
                finally:
                    for source in self._sources:
                        await source.aclose()
        if self._crash is not None:
            raise WorkerCrashed(f"internal error: {self._crash!r}") from self._crash
        if self._fatal is not None:
            raise self._fatal

    async def _serve(
        self,
        configs: Sequence[SourceConfig],
        clients: SfnClients,
        state: Any,
        stop: asyncio.Event,
        force_stop: asyncio.Event,
    ) -> None:
        poll_backoff, send_backoff = self._backoffs
        parts = SourceParts(
            polls=clients.polls,
            calls=clients.calls,
            sqs_polls=clients.sqs_polls,
            sqs=clients.sqs,
            worker_name=self.settings.worker_name,
            stopping=self._stopping,
            tasks_changed=self.tasks_changed,
            state=state,
            middlewares=self.app.middlewares,
            process_init=self.app.process_initializer,
            on_fatal=self._on_fatal,
            on_crash=self._on_crash,
            tracing=setup_tracing(self.settings.trace_context_key),
            poll_backoff=poll_backoff,
            send_backoff=send_backoff,
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
            self._started = True
            log_started(self._sources, self.settings)
            await _wait_any(stop, self._fatal_event, self._crashed)
            self._stopping.set()
            grace = self.settings.shutdown_grace_seconds
            await Shutdown(self._sources, runs, grace, force_stop).run()
            await cancel_and_wait(monitor)
            if emf is not None:
                await cancel_and_wait(emf)  # its last record covers the shutdown

    def _worker(self, config: SourceConfig, parts: SourceParts) -> SourceWorker:
        if isinstance(config, ActivityConfig):
            return ActivityWorker(config, parts, self.metrics.for_activity(config.name))
        assert isinstance(config, CallbackQueueConfig)
        return CallbackQueueWorker(config, parts, self.metrics.for_queue(config.name))

    async def _publish_emf(self, accessory: Accessory) -> None:
        settings = self.settings
        if self._stdout is None:  # one writer for stdout, kept across restarts
            self._stdout = open_stream(1, "stdout", limit_bytes=STDOUT_BUFFER_BYTES)
            self._stdout.report_to(
                accessory.drop, lambda error: accessory.failed(error, stopped=True)
            )
        publisher = EmfPublisher(
            self.metrics,
            lambda: self._sources,
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
        where = {"arn": config.arn} if isinstance(config, ActivityConfig) else {}
        if isinstance(config, CallbackQueueConfig):
            where = {"queue_url": config.queue_url, "on_shutdown": config.on_shutdown.value}
        log.info(
            "worker started",
            **{config.kind: config.name},
            **where,
            pollers=config.pollers,
            concurrency=config.concurrency,
            heartbeat_seconds=config.heartbeat_seconds,
            handler=import_path(config.handler),
            handler_mode=source.handler_mode,
        )
        if config.heartbeat_rate_per_second > HEARTBEAT_RATE_WARNING_PER_SECOND:
            log.warning(
                "heartbeat rate may exceed the account's SendTaskHeartbeat quota",
                activity=config.name,
                heartbeats_per_second=round(config.heartbeat_rate_per_second),
                hint=f"raise SFN_HEARTBEAT_SECONDS or lower SFN_CONCURRENCY ({config.key})",
            )
    if settings.shutdown_grace_seconds < POLL_RETURN_SECONDS:
        log.info(
            "note: long polls open at shutdown may outlast the grace period",
            grace_seconds=settings.shutdown_grace_seconds,
            hint="SFN_SHUTDOWN_GRACE_SECONDS >= 65 (and ECS stopTimeout above it) lets "
            "every open poll return before exit",
        )


async def _wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
