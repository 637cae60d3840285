"""Heartbeats at the account's quota: pacing instead of retry storms.

SendTaskHeartbeat has one token bucket per account and region (500/s refill in the largest
regions, 300/s elsewhere), shared by every worker. When tasks in flight / interval exceed
it, retrying each throttled beat on its own backoff sends a multiple of the demand, mostly
throttled again, and which task's beat gets through is luck: some go a whole
HeartbeatSeconds without one and time out.

Once a beat is throttled, the source's beats queue here instead and go out at a rate that
follows what the service accepts: on a throttle (at most twice a second) it drops to 90 %
of the beats accepted in the last second; after half a second without one, with beats
waiting, it doubles until the next throttle, then rises by a fixed step. Workers sharing
the quota so converge on equal shares of it. The queue is ordered by each task's last
accepted beat, so the task closest to its HeartbeatSeconds goes first. Terminal calls have
their own quota and never wait here. After a calm spell with nothing queued, beats go out
directly again.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import structlog

log = structlog.get_logger("sfn_worker.heartbeat")

TICK_SECONDS = 0.02
MIN_RATE = 1.0  # beats per second: never stop beating altogether
BELOW_ACCEPTED = 0.9
ADJUST_SECONDS = 0.5  # between two changes of the rate
PROBE_INCREASE = 2.0  # from the start of pacing until the next throttle
# Then additive: workers that each cut their rate by a fraction on a throttle and add the
# same amount while calm converge on equal shares of the quota (AIMD). Adding a fraction
# instead keeps whatever ratio they had: measured with 4 workers at 500/s, one kept too
# small a share and 913 of the 4,000 tasks went 15 s without a beat.
# The step grows with the square of how overdue this worker's oldest waiting beat is (its
# age in intervals): a worker whose tasks starve claims a larger share faster. Measured
# (4 workers, 1,000 tasks each at 500/s): the worst gap between two accepted beats fell
# from 12-14 s to 11-12 s (with equal shares it would be 8 s).
ADDITIVE_INCREASE = 5.0  # beats/s per ADJUST_SECONDS, for beats one interval old
WINDOW_SECONDS = 1.0  # accepted beats are counted over this
# How long the first throttled spell is measured before the one warning: long enough for
# the rate to settle on what the account grants.
MEASURE_SECONDS = 10.0


class Paced(Protocol):
    stopped: bool
    last_ok: float  # loop time of the task's last accepted beat (its start at first)


P = TypeVar("P", bound=Paced)


class HeartbeatPacer(Generic[P]):
    def __init__(
        self,
        send: Callable[[P], None],
        interval: float,
        in_flight: Callable[[], int],
    ) -> None:
        self._send = send
        self._interval = interval
        self._in_flight = in_flight
        self._queue: list[tuple[float, int, P]] = []
        self._order = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._rate = 0.0
        self._probing = True  # no throttle since pacing began: find the rate fast
        self._last_throttle = -math.inf
        self._last_change = -math.inf
        self._recent: deque[float] = deque()  # when the beats of the last window were accepted
        self._accepted = 0  # beats accepted since pacing began
        self._paced_since = 0.0
        self._peak_in_flight = 0  # while paced: the warning's numbers outlive the tasks
        self._warned = False

    def active(self) -> bool:
        return self._task is not None

    def rate(self) -> float:
        return self._rate

    def queue(self, beat: P) -> None:
        heapq.heappush(self._queue, (beat.last_ok, next(self._order), beat))

    def throttled(self, beat: P) -> None:
        """``beat`` was throttled: queue it; pace the beats (again) just below what the
        service accepted in the last second."""
        now = asyncio.get_running_loop().time()
        self._last_throttle = now
        self.queue(beat)
        if self._task is None:
            self._paced_since = now
            self._accepted = 0
            self._probing = True
            self._task = asyncio.create_task(self._run())
            self._task.add_done_callback(self._ended)
        elif now - self._last_change < ADJUST_SECONDS:
            return
        else:
            self._probing = False
        self._rate = max(MIN_RATE, self._accepted_rate(now) * BELOW_ACCEPTED)
        self._last_change = now

    def accepted(self, now: float) -> None:
        self._recent.append(now)
        if self._recent[0] < now - WINDOW_SECONDS:
            self._trim(now)
        if self._task is not None:
            self._accepted += 1

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0] < now - WINDOW_SECONDS:
            self._recent.popleft()

    def _accepted_rate(self, now: float) -> float:
        self._trim(now)
        return len(self._recent) / WINDOW_SECONDS

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("heartbeat pacing failed; beats go out directly", error=repr(error))
            for _, _, beat in self._queue:
                self._send(beat)
            self._queue.clear()

    async def _run(self) -> None:
        # Created inside one beat's send: the pacer serves every task, so no token of its own.
        structlog.contextvars.unbind_contextvars("token")
        loop = asyncio.get_running_loop()
        calm = max(5.0, self._interval)
        allowance = 0.0
        last = loop.time()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = loop.time()
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight())
            if (
                self._queue
                and now - self._last_throttle >= ADJUST_SECONDS
                and now - self._last_change >= ADJUST_SECONDS
            ):
                if self._probing:
                    self._rate = max(self._rate * PROBE_INCREASE, self._rate + 1.0)
                else:
                    overdue = max(1.0, (now - self._queue[0][0]) / self._interval)
                    self._rate += ADDITIVE_INCREASE * overdue * overdue
                self._last_change = now
            if not self._warned and now - self._paced_since >= MEASURE_SECONDS:
                self._warn(now)
            allowance = min(allowance + (now - last) * self._rate, max(1.0, self._rate))
            last = now
            while allowance >= 1.0 and self._queue:
                _, _, beat = heapq.heappop(self._queue)
                if beat.stopped:
                    continue
                allowance -= 1.0
                self._send(beat)
            if not self._queue and now - self._last_throttle >= calm:
                log.info("heartbeats no longer throttled; pacing ends", rate=round(self._rate))
                return

    def _warn(self, now: float) -> None:
        """Once per source: what the service accepted, and the interval it would carry."""
        self._warned = True
        accepted = self._accepted / max(1e-9, now - self._paced_since)
        tasks = max(self._peak_in_flight, self._in_flight())
        needed = tasks / self._interval
        suggested = math.ceil(tasks / max(accepted, MIN_RATE) * 1.2)
        log.warning(
            "heartbeats throttled by the account's SendTaskHeartbeat quota: pacing them",
            tasks_in_flight=tasks,
            heartbeat_seconds=self._interval,
            heartbeats_needed_per_second=round(needed),
            heartbeats_accepted_per_second=round(accepted),
            suggested_heartbeat_seconds=suggested,
            hint=(
                "the quota (500/s refill in us-east-1, us-west-2, eu-west-1; 300/s elsewhere) "
                "is shared by every worker in the account and region: set "
                f"SFN_HEARTBEAT_SECONDS >= {suggested} (with HeartbeatSeconds in the state "
                "machine a few times that), lower SFN_CONCURRENCY, or ask AWS for a higher "
                "SendTaskHeartbeat quota"
            ),
        )
