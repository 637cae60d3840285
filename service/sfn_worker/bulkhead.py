"""Bulkheads: what runs beside the task path may fail, never the worker.

An *accessory* is any part that is not the task path itself: metrics output (EMF on
stdout), tracing export, ECS task protection, the event loop monitor, the app's lifespan,
SQS housekeeping (visibility, deletes). Each sits behind a bulkhead, and the rule is:

- it never blocks the event loop (writes to a pipe go through a bounded buffer drained off
  the loop; a full buffer drops and counts);
- every call it makes has a deadline;
- its failure is logged once, then at most once per ``LOG_EVERY_SECONDS`` with the count,
  counted in ``sfn_worker_accessory_failures_total{accessory}`` and shown in ``/healthz``
  under ``accessories`` (without making the worker unhealthy: its tasks still run);
- it never stops the worker. Only an invalid configuration stops it, at start (exit 2), and
  only a defect in the task machinery itself ends the process (after answering what runs);
- shutdown bounds it like every other part.

``Accessories`` holds the process's accessories; ``supervise`` runs one until it is
cancelled, restarting it after a failure with a backoff.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

import structlog

from .metrics import Metrics
from .redact import describe
from .retry import Backoff

log = structlog.get_logger("sfn_worker.bulkhead")

LOG_EVERY_SECONDS = 60.0
RESTART_BACKOFF = Backoff(base_seconds=1.0, cap_seconds=60.0)


class AccessoryState(Enum):
    OK = "ok"
    FAILING = "failing"  # its last attempt failed; it is retried
    STOPPED = "stopped"  # given up for the rest of the process's life (said why)


@dataclass(frozen=True)
class AccessorySnapshot:
    state: str
    failures: int
    dropped: int
    last_error: str | None


class Accessory:
    """One accessory's health, and the one place its failures are logged and counted."""

    def __init__(self, name: str, metrics: Metrics, *, log_every: float = LOG_EVERY_SECONDS):
        self.name = name
        self.state = AccessoryState.OK
        self.failures = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._log_every = log_every
        self._logged_at = -math.inf
        self._unlogged = 0
        self._failures = metrics.accessory_failures.labels(name)
        self._dropped = metrics.accessory_dropped.labels(name)

    def failed(
        self, error: BaseException | str, *, stopped: bool = False, **fields: object
    ) -> None:
        """Count a failure; log it if it is the first, or the first for a while. With
        ``stopped`` the accessory is off for good, which is always logged."""
        text = error if isinstance(error, str) else describe(error)
        self.failures += 1
        self._failures.inc()
        self.last_error = text
        previous = self.state
        self.state = AccessoryState.STOPPED if stopped else AccessoryState.FAILING
        self._unlogged += 1
        now = time.monotonic()
        if stopped or previous is AccessoryState.OK or now - self._logged_at >= self._log_every:
            log.warning(
                f"{self.name}: stopped" if stopped else f"{self.name}: failing",
                accessory=self.name,
                error=text,
                failures=self._unlogged,
                hint="this does not stop the worker: tasks go on",
                **fields,
            )
            self._logged_at = now
            self._unlogged = 0

    def recovered(self) -> None:
        if self.state is AccessoryState.FAILING:
            log.info(f"{self.name}: working again", accessory=self.name)
            self.state = AccessoryState.OK

    def drop(self, count: int = 1) -> None:
        """Output given up to keep the loop free (a full buffer); counted, not logged."""
        self.dropped += count
        self._dropped.inc(count)

    def snapshot(self) -> AccessorySnapshot:
        return AccessorySnapshot(self.state.value, self.failures, self.dropped, self.last_error)


class Accessories:
    """The process's accessories by name; ``/healthz`` shows them all."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._by_name: dict[str, Accessory] = {}

    def get(self, name: str) -> Accessory:
        if name not in self._by_name:
            self._by_name[name] = Accessory(name, self._metrics)
        return self._by_name[name]

    def snapshot(self) -> dict[str, AccessorySnapshot]:
        return {name: a.snapshot() for name, a in sorted(self._by_name.items())}

    async def supervise(
        self,
        name: str,
        run: Callable[[Accessory], Awaitable[None]],
        *,
        restart: Backoff | None = RESTART_BACKOFF,
    ) -> None:
        """Run ``run(accessory)`` until cancelled. An exception out of it is the accessory's
        failure: logged and counted, then (with ``restart``) it runs again after a backoff,
        else it stays stopped. Never raises but CancelledError."""
        accessory = self.get(name)
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await run(accessory)
                return
            except Exception as exc:  # the bulkhead: an accessory never stops the worker
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # It failed while cancelled (its cleanup raised over the
                    # CancelledError): report it, and stop as asked, never restart.
                    accessory.failed(exc, stopped=True)
                    raise asyncio.CancelledError from exc
                if restart is None:
                    accessory.failed(exc, stopped=True)
                    return
                if time.monotonic() - started > restart.cap_seconds:
                    attempt = 0  # it worked for a while: start the backoff again
                delay = restart.delay(attempt)
                attempt += 1
                accessory.failed(exc, restart_in=round(delay, 1))
            await asyncio.sleep(delay)
