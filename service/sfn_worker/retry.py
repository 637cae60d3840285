"""Capped exponential backoff with jitter, and the one retry loop (``retrying``) that
polls, heartbeats, terminal calls, SQS calls and start-up lookups share.

Each caller says only what differs: what an error means (``judge``: try again after the
backoff, at once, or stop with a value), when a wait would be too late (``before_wait``),
what to say about a retry (``on_retry``), and which API a throttle notice names.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

import structlog

from .aws_errors import API_ERRORS, ErrorKind, classify, is_throttling

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


T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Again(Enum):
    """What a failed attempt calls for, when it is not the end."""

    AFTER_BACKOFF = "after_backoff"  # transient: wait the backoff, then try again
    AT_ONCE = "at_once"  # the next attempt differs (what it sends changed): no wait


@dataclass(frozen=True, slots=True)
class Stop(Generic[T_co]):
    """End the loop: ``retrying`` returns ``value``."""

    value: T_co


def transient_only(exc: BaseException) -> Again | Stop[T]:
    """The default judge: transient errors are retried, anything else is raised."""
    if classify(exc) is ErrorKind.TRANSIENT:
        return Again.AFTER_BACKOFF
    raise exc


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    judge: Callable[[BaseException], Again | Stop[T]] = transient_only,
    cap_seconds: float | None = None,
    throttle_api: str | Callable[[], str] | None = None,
    before_wait: Callable[[BaseException, float, Retry], Stop[T] | None] | None = None,
    on_retry: Callable[[BaseException, float, Retry], None] | None = None,
    errors: tuple[type[BaseException], ...] = API_ERRORS,
) -> T:
    """``attempt()`` until it returns, or ``judge`` (or ``before_wait``) stops the loop.

    An attempt that raises one of ``errors`` is judged; one that is to be tried again
    after the backoff waits ``Retry.next_delay``. With ``throttle_api``, a throttled error
    waits the short throttle backoff and is counted in the process's throttle notice for
    that API (a callable: the API the failed attempt called; ``on_retry`` still sees it, to
    count it). ``before_wait`` sees the delay
    first and may stop the loop (a deadline the wait would pass). Other exceptions, and
    cancellation, propagate.
    """
    retry = Retry(backoff, cap_seconds)
    while True:
        try:
            return await attempt()
        except errors as exc:
            verdict = judge(exc)
            if isinstance(verdict, Stop):
                return verdict.value
            if verdict is Again.AT_ONCE:
                continue
            throttled = throttle_api is not None and is_throttling(exc)
            delay = retry.next_delay(throttled)
            if before_wait is not None:
                stop = before_wait(exc, delay, retry)
                if stop is not None:
                    return stop.value
            if throttled:
                assert throttle_api is not None
                note_throttled(throttle_api if isinstance(throttle_api, str) else throttle_api())
            if on_retry is not None:
                on_retry(exc, delay, retry)
            await retry.wait(delay)
