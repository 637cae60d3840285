"""Capped exponential backoff with jitter, shared by polls, heartbeats and terminal calls."""

from __future__ import annotations

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


POLL_BACKOFF = Backoff(base_seconds=0.5, cap_seconds=20.0)
SEND_BACKOFF = Backoff(base_seconds=0.1, cap_seconds=5.0)
