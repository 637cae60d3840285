"""The ordered shutdown, for every source of the process at once, within one grace period.

1. stop polling: idle pollers are cancelled, open long polls are left to return; a task
   that arrives now is failed with ``Worker.Shutdown`` without being started;
2. drain: running and queued tasks finish, until the grace period minus the reserve;
3. cancel: what is still running is cancelled and answered with ``Worker.Shutdown`` (a
   callback queue's task is released for another worker instead, unless told otherwise),
   using the reserve for those calls;
4. hard deadline (end of the grace period): whatever is still pending is abandoned,
   counted and reported in one line.
A second signal (``force_stop``) jumps to phase 3 with a short deadline.

The reserve is the time the tokens in flight need at the answer rate the worker measured
(tasks/answering.py), with a margin; it is sized again whenever the drain reaches it, from
the tokens still in flight, so tasks that finish on their own lend their time to the
drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import structlog

from ..tasks.answering import DEFAULT_ANSWERS_PER_SECOND, AnswerGate
from ..tasks.source_worker import SourceWorker

log = structlog.get_logger("sfn_worker.shutdown")

# After a second signal: time left for SendTaskFailure on everything still running.
FORCED_EXIT_SECONDS = 1.5
# After cancelling handlers at the end of the grace: how long to let them unwind before
# the worker stops waiting for them and answers their tokens anyway.
CANCEL_UNWIND_FRACTION = 0.25


# The reserve: a base for cancelling, unwinding and a retry or two (at most half the
# grace), plus the time the tokens in flight take at the measured answer rate with this
# margin (the rate drops while the loop also cancels and unwinds handlers), at most this
# share of the grace: an unanswered token waits for its state's timeout, a handler cut
# short is re-driven at once by a Retry on Worker.Shutdown.
RESERVE_BASE_SECONDS = 1.0
RESERVE_MARGIN = 1.5
RESERVE_MAX_SHARE = 0.8
# The drain goes on after its deadline only for a resized reserve this much later.
RESERVE_STEP_SECONDS = 0.1
# The very end of the grace is kept for leaving: a loop busy answering wakes 0.05-0.1 s
# late for the deadline, then what is left is cancelled (30-60 us a task), the clients
# closed, the process exits. Measured (bench/, shutdown at scale, two shared cores): with
# 5,000 in flight and 0.3 s kept, gone up to 0.1 s past a 2 s grace; with 10,000, 0.3-0.5 s
# more before the CLI froze the garbage collector at exit.
EXIT_BASE_SECONDS = 0.2
EXIT_SECONDS_PER_TASK = 60e-6
EXIT_MAX_SHARE = 0.2


def failure_reserve_seconds(
    grace_seconds: float,
    in_flight: int,
    answers_per_second: float = DEFAULT_ANSWERS_PER_SECOND,
) -> float:
    """End of the grace period kept for answering the tokens still in flight."""
    answering = in_flight / max(answers_per_second, 1.0) * RESERVE_MARGIN
    base = min(RESERVE_BASE_SECONDS, grace_seconds / 2)
    return min(grace_seconds * RESERVE_MAX_SHARE, base + answering)


def exit_allowance_seconds(grace_seconds: float, in_flight: int) -> float:
    """End of the grace period kept for the process to leave after the last answer."""
    wanted = EXIT_BASE_SECONDS + in_flight * EXIT_SECONDS_PER_TASK
    return min(grace_seconds * EXIT_MAX_SHARE, wanted)


class Shutdown:
    def __init__(
        self,
        sources: Sequence[SourceWorker],
        runs: Sequence[asyncio.Task[None]],
        grace_seconds: float,
        force_stop: asyncio.Event,
        answers: AnswerGate | None = None,
        *,
        kept_seconds: float = 0.0,
    ) -> None:
        self._sources = sources
        self._runs = runs
        self._grace = grace_seconds
        # The end of the grace kept for what comes after the sources (tracing's export).
        self._kept = kept_seconds
        self._force_stop = force_stop
        # The terminal calls of every source: their measured rate sizes the reserve.
        self._answers = answers or AnswerGate()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        grace = self._grace - self._kept

        # Phase 1: stop polling. Only pollers without an open request may be cancelled.
        for source in self._sources:
            source.stop_polling()
        running = self._in_flight()
        # Answering ends this much before the grace does, so the process is gone by then.
        answers_end = started + grace - exit_allowance_seconds(grace, running)
        rate = self._answers.answers_per_second()
        reserve = failure_reserve_seconds(grace, running, rate)
        log.info(
            "shutdown: polling stopped",
            open_polls=sum(a.open_polls() for a in self._sources),
            running=running,
            grace_seconds=self._grace,
            reserve_seconds=round(reserve, 2),
            answers_per_second=round(rate),
            **({"kept_for_tracing_seconds": round(self._kept, 2)} if self._kept else {}),
        )

        # Phase 2: drain until the grace period (minus the reserve) is over.
        if await self._drain(answers_end, answers_end - reserve):
            log.info("shutdown: all tasks answered and all polls returned")
            return

        # Phase 3: cancel what is left and answer each token with Worker.Shutdown.
        forced = self._force_stop.is_set()
        hard_deadline = answers_end
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

    def _in_flight(self) -> int:
        return sum(a.in_flight() for a in self._sources)

    async def _drain(self, answers_end: float, deadline: float) -> bool:
        """Phase 2; True once everything returned. At the deadline the reserve is sized
        again from the tokens still in flight: fewer of them leave more time to drain."""
        loop = asyncio.get_running_loop()
        while not await self._wait_all(deadline, self._force_stop):
            if self._force_stop.is_set():
                return False
            rate = self._answers.answers_per_second()
            reserve = failure_reserve_seconds(self._grace - self._kept, self._in_flight(), rate)
            if answers_end - reserve < loop.time() + RESERVE_STEP_SECONDS:
                return False
            deadline = answers_end - reserve
        return True

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
        on_the_wire = self._answers.on_the_wire()
        unanswered = sum(a.leave_unanswered() for a in self._sources)
        if unanswered:
            # One line for all of them: thousands of lines now would only delay the exit.
            log.error(
                "shutdown: deadline reached with tasks unanswered; they wait for their timeout",
                unanswered=unanswered,
                # Sent, not answered yet: the service may have recorded them.
                of_which_sent=min(on_the_wire, unanswered),
                answers_per_second=round(self._answers.answers_per_second()),
                hint="a longer grace (SFN_SHUTDOWN_GRACE_SECONDS, ECS stopTimeout above it) "
                "or fewer tasks in flight per worker lets every token be answered",
            )
        if all(run.done() for run in self._runs):
            if not unanswered:
                log.info("shutdown: every task answered")
            return
        open_polls = sum(a.open_polls() for a in self._sources)
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
