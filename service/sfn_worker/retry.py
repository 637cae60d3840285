"""Capped exponential backoff with jitter, and the one retry loop helper that polls,
heartbeats and terminal calls share."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass


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

    def next_delay(self) -> float:
        delay = self._backoff.delay(self.failures)
        return delay if self._cap is None else min(delay, self._cap)

    async def wait(self, delay: float) -> None:
        self.failures += 1
        await asyncio.sleep(delay)

    def reset(self) -> None:
        self.failures = 0


POLL_BACKOFF = Backoff(base_seconds=0.5, cap_seconds=20.0)
SEND_BACKOFF = Backoff(base_seconds=0.1, cap_seconds=5.0)
