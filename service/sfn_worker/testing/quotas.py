"""The service's API quotas, for the fake: one token bucket per API, shared by every client.

Step Functions meters GetActivityTask, SendTaskSuccess, SendTaskFailure and
SendTaskHeartbeat per account and region, each with its own bucket: 3,000 calls of burst
refilled at 500/s in the largest regions, 1,500 and 300/s elsewhere. A call that finds its
bucket empty is answered ThrottlingException and takes nothing from it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

METERED = ("GetActivityTask", "SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat")


@dataclass(frozen=True)
class Quota:
    burst: int
    refill_per_second: float

    def __post_init__(self) -> None:
        # An empty bucket that never refills throttles every call for ever.
        if not self.burst >= 1:
            raise ValueError(f"burst={self.burst!r}: a quota's burst is at least 1 call")
        if not self.refill_per_second > 0:
            raise ValueError(
                f"refill_per_second={self.refill_per_second!r}: a quota refills, above 0"
            )


LARGE_REGIONS = Quota(burst=3_000, refill_per_second=500.0)  # us-east-1, us-west-2, eu-west-1
OTHER_REGIONS = Quota(burst=1_500, refill_per_second=300.0)


class _Bucket:
    def __init__(self, quota: Quota, now: float) -> None:
        self._quota = quota
        self._tokens = float(quota.burst)
        self._at = now

    def take(self, now: float) -> bool:
        quota = self._quota
        self._tokens = min(quota.burst, self._tokens + (now - self._at) * quota.refill_per_second)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class ApiQuotas:
    """One bucket per metered API, full at the start; counts what each API let through and
    what it throttled, per second of the run (for plots); ``summary()`` (or ``str()``) sums
    them up per API."""

    def __init__(self, quota: Quota = LARGE_REGIONS, clock: Callable[[], float] = time.monotonic):
        self.quota = quota
        self._clock = clock
        self.started = clock()
        self._buckets = {api: _Bucket(quota, self.started) for api in METERED}
        self.allowed: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        # second of the run -> (API -> calls throttled); closed tasks go in "closed".
        self.per_second: dict[int, Counter[str]] = {}

    def take(self, api: str) -> bool:
        """False when ``api`` is metered and its bucket is empty."""
        bucket = self._buckets.get(api)
        if bucket is None:
            return True
        now = self._clock()
        if bucket.take(now):
            self.allowed[api] += 1
            return True
        self.throttled[api] += 1
        self._count(now, f"throttled {api}")
        return False

    def task_closed(self) -> None:
        self._count(self._clock(), "closed")

    def _count(self, now: float, what: str) -> None:
        second = int(now - self.started)
        counts = self.per_second.get(second)
        if counts is None:
            counts = self.per_second[second] = Counter()
        counts[what] += 1

    def summary(self) -> str:
        """Calls and throttled calls per metered API, one line each, for a test's output."""
        width = max(map(len, METERED))
        lines = [f"{'API':<{width}}  {'calls':>8}  {'throttled':>9}"]
        for api in METERED:
            calls = self.allowed[api] + self.throttled[api]
            lines.append(f"{api:<{width}}  {calls:>8,}  {self.throttled[api]:>9,}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def bound_seconds(self, calls: dict[str, int]) -> float:
        """The least time these calls can take under the quota, buckets full at the start."""
        quota = self.quota
        return max(
            (max(0, count - quota.burst) / quota.refill_per_second for count in calls.values()),
            default=0.0,
        )
