"""The ordered shutdown, for every source of the process at once, within one grace period.

1. stop polling: idle pollers are cancelled, open long polls are left to return; a task
   that arrives now is failed with ``Worker.Shutdown`` without being started;
2. drain: running and queued tasks finish, until the grace period minus the reserve;
3. cancel: what is still running is cancelled and answered with ``Worker.Shutdown`` (a
   callback queue's task is released for another worker instead, unless told otherwise),
   using the reserve (sized by the total concurrency) for those calls;
4. hard deadline (end of the grace period): whatever is still pending is abandoned.
A second signal (``force_stop``) jumps to phase 3 with a short deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import structlog

from ..tasks.source_worker import SourceWorker

log = structlog.get_logger("sfn_worker.shutdown")

# A long poll lasts up to 60 s; a grace this long lets every open poll return.
POLL_RETURN_SECONDS = 65.0
# After a second signal: time left for SendTaskFailure on everything still running.
FORCED_EXIT_SECONDS = 1.5
# After cancelling handlers at the end of the grace: how long to let them unwind before
# the worker stops waiting for them and answers their tokens anyway.
CANCEL_UNWIND_FRACTION = 0.25


def failure_reserve_seconds(grace_seconds: float, total_concurrency: int) -> float:
    """End of the grace period kept for SendTaskFailure calls on interrupted tasks."""
    return min(grace_seconds / 2, 2.0 + 0.004 * total_concurrency)


class Shutdown:
    def __init__(
        self,
        sources: Sequence[SourceWorker],
        runs: Sequence[asyncio.Task[None]],
        grace_seconds: float,
        force_stop: asyncio.Event,
        *,
        kept_seconds: float = 0.0,
    ) -> None:
        self._sources = sources
        self._runs = runs
        self._grace = grace_seconds
        # The end of the grace kept for what comes after the sources (tracing's export).
        self._kept = kept_seconds
        self._force_stop = force_stop

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        total_concurrency = sum(a.config.concurrency for a in self._sources)
        grace = self._grace - self._kept
        grace_deadline = loop.time() + grace
        drain_deadline = grace_deadline - failure_reserve_seconds(grace, total_concurrency)

        # Phase 1: stop polling. Only pollers without an open request may be cancelled.
        for source in self._sources:
            source.stop_polling()
        log.info(
            "shutdown: polling stopped",
            open_polls=sum(a.open_polls() for a in self._sources),
            running=sum(a.in_flight() for a in self._sources),
            grace_seconds=self._grace,
            **({"kept_for_tracing_seconds": round(self._kept, 2)} if self._kept else {}),
        )

        # Phase 2: drain until the grace period (minus the reserve) is over.
        if await self._wait_all(drain_deadline, self._force_stop):
            log.info("shutdown: all tasks answered and all polls returned")
            return

        # Phase 3: cancel what is left and answer each token with Worker.Shutdown.
        forced = self._force_stop.is_set()
        hard_deadline = grace_deadline
        if forced:
            hard_deadline = min(hard_deadline, loop.time() + FORCED_EXIT_SECONDS)
        await self._cancel_running(hard_deadline, "second signal" if forced else "grace over")

        # Phase 4: until the hard deadline, late tokens are failed and open polls may return.
        # A second signal now shortens the deadline.
        drained = await self._wait_all(hard_deadline, None if forced else self._force_stop)
        if not drained and not forced and self._force_stop.is_set():
            hard_deadline = min(hard_deadline, loop.time() + FORCED_EXIT_SECONDS)
            await self._cancel_running(hard_deadline, "second signal")
            await self._wait_all(hard_deadline, None)
        await self._abandon_what_is_left()

    async def _cancel_running(self, hard_deadline: float, reason: str) -> None:
        loop = asyncio.get_running_loop()
        count = sum(a.cancel_running(hard_deadline) for a in self._sources)
        if not count:
            return
        log.warning("shutdown: cancelling running tasks", reason=reason, count=count)
        unwind_deadline = loop.time() + (hard_deadline - loop.time()) * CANCEL_UNWIND_FRACTION
        if await self._wait_all(unwind_deadline, None):
            return
        stubborn = sum(a.abandon_running() for a in self._sources)
        if stubborn:
            log.warning(
                "shutdown: handlers ignore cancellation; answering their tokens anyway",
                count=stubborn,
            )

    async def _abandon_what_is_left(self) -> None:
        if all(run.done() for run in self._runs):
            log.info("shutdown: every task answered")
            return
        open_polls = sum(a.open_polls() for a in self._sources)
        unanswered = sum(a.in_flight() for a in self._sources)
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
        for run in self._runs:
            run.cancel()
        await asyncio.wait(self._runs)

    async def _wait_all(self, deadline: float, force_stop: asyncio.Event | None) -> bool:
        """Wait until every source has returned; False at the deadline or on force_stop."""
        loop = asyncio.get_running_loop()
        while True:
            pending = {run for run in self._runs if not run.done()}
            if not pending:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0 or (force_stop is not None and force_stop.is_set()):
                return False
            async with _waiting_for(force_stop) as forced:
                await asyncio.wait(
                    {*pending, *([forced] if forced else [])},
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )


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
