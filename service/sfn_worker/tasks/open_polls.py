"""How many long requests one source keeps open at once: one per free slot (the slots see to
that), at most its pollers, and fewer while the service says too many poll.

Step Functions lets at most 1,000 GetActivityTask polls wait on one activity ARN, across
the whole fleet; past it, a poll fails at once with ActivityWorkerLimitExceeded. A fleet
that kept retrying every poll would hammer the service for nothing, so each worker halves
its own target on that answer and grows it back by one per target's worth of answered
polls (AIMD, like TCP's congestion window): about one more poll a minute when idle. Polls
refused together are one signal: the target is halved once for the requests that were
already under way when it was last lowered.
"""

from __future__ import annotations

import structlog

from .waiters import Waiters

log = structlog.get_logger("sfn_worker.intake")


class OpenPolls:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._target = cap
        self._answered = 0  # answered polls since the target last moved
        self._open = 0
        self._waiters = Waiters()
        self._lowered = False  # said so since the target was last at the cap
        self._epoch = 0  # bumped at each lowering; a request carries the one it began in
        self.times_lowered = 0

    def target(self) -> int:
        return self._target

    def open(self) -> int:
        return self._open

    async def enter(self) -> int:
        """Wait until one more request may be open, and count it open; its ticket for
        ``too_many``."""
        while self._open >= self.target():
            await self._waiters.wait()
        self._open += 1
        return self._epoch

    def keep(self) -> int | None:
        """A refused request that kept its place through its backoff goes again: its new
        ticket, or None (its place given up) if the target fell below the open ones."""
        if self._open > self._target:
            self.leave(answered=False)
            return None
        return self._epoch

    def leave(self, *, answered: bool) -> None:
        """A request ended; ``answered``: the service served it (a task or an empty poll)."""
        self._open -= 1
        if answered and self._target < self.cap:
            self._answered += 1
            if self._answered >= self._target:
                self._target, self._answered = self._target + 1, 0
            if self._target == self.cap and self._lowered:
                self._lowered = False
                log.info("open polls back at their cap", open_polls=self.cap)
        self._wake()

    def too_many(self, code: str, ticket: int, *, say: bool = True) -> None:
        """The service refused the request of ``ticket``: too many are open on the ARN,
        fleet-wide, or (``say=False``) the account's calls are throttled, which the process's
        throttle notice reports: fewer open requests then mean fewer calls, where hundreds
        retried each within a second would keep the whole account throttled."""
        if ticket != self._epoch:
            return  # begun before the last lowering: that one answered it already
        self._epoch += 1
        self.times_lowered += 1
        self._target, self._answered = max(1, self._target // 2), 0
        if say and not self._lowered:
            self._lowered = True
            log.warning(
                "too many workers poll this activity; lowering this worker's open polls"
                " and backing off",
                error=code,
                open_polls=self.target(),
                cap=self.cap,
                hint="the service allows 1,000 open polls per activity ARN across all"
                " workers: lower SFN_POLLERS or the number of workers",
            )

    def _wake(self) -> None:
        self._waiters.wake(self.target() - self._open)
