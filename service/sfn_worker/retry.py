"""Capped exponential backoff with jitter, and the one retry loop helper that polls,
heartbeats and terminal calls share."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from dataclasses import dataclass

import structlog

log = structlog.get_logger("sfn_worker.retry")


@dataclass(frozen=True)
class Backoff:
    base_seconds: float = 0.2
    cap_seconds: float = 20.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based).

        Half of the exponential step is fixed and half random ("equal jitter"), so many
        workers throttled at once spread out without ever retrying in a tight loop.
        """
        step = min(self.cap_seconds, self.base_seconds * 2.0 ** min(attempt, 30))
        return step / 2 + random.uniform(0, step / 2)


class Retry:
    """The failed attempts of one call: the wait before the next one, and that wait.

    ``cap_seconds`` bounds each wait below the backoff's own cap (a heartbeat must not wait
    longer than half its interval).
    """

    def __init__(self, backoff: Backoff, cap_seconds: float | None = None) -> None:
        self._backoff = backoff
        self._cap = cap_seconds
        self.failures = 0

    def next_delay(self, throttled: bool = False) -> float:
        """A throttled call waits on THROTTLE_BACKOFF: the bucket refills every instant, so
        a long wait only leaves what it grants unused."""
        delay = (THROTTLE_BACKOFF if throttled else self._backoff).delay(self.failures)
        return delay if self._cap is None else min(delay, self._cap)

    async def wait(self, delay: float) -> None:
        self.failures += 1
        await asyncio.sleep(delay)

    def reset(self) -> None:
        self.failures = 0


POLL_BACKOFF = Backoff(base_seconds=0.5, cap_seconds=20.0)
SEND_BACKOFF = Backoff(base_seconds=0.1, cap_seconds=5.0)
# Measured with 8 workers at the quota (bench/, fleet): with SEND_BACKOFF's 5 s cap the
# unlucky last answers waited 4.8 s past the quota's bound, 12 % of the run.
THROTTLE_BACKOFF = Backoff(base_seconds=0.05, cap_seconds=1.0)


class ThrottleNotice:
    """At most one warning per API per ``every`` seconds while calls are throttled, with
    how many were: at the quota, a line per retry would flood the logs."""

    def __init__(self, every: float = 60.0) -> None:
        self._every = every
        self._last: dict[str, float] = {}
        self._counts: Counter[str] = Counter()

    def note(self, api: str) -> None:
        self._counts[api] += 1
        now = time.monotonic()
        if now - self._last.get(api, -math.inf) < self._every:
            return
        log.warning(
            "calls throttled by the account's API quota; retrying them",
            api=api,
            throttled=self._counts[api],
            per_seconds=self._every,
            hint="the quota is per account and region, shared by every worker: fewer "
            "workers finish no slower; ask AWS for more if tasks wait too long",
        )
        self._last[api] = now
        self._counts[api] = 0


THROTTLES = ThrottleNotice()  # one per process: the quota is the account's, not a source's


def note_throttled(api: str) -> None:
    THROTTLES.note(api)
