"""Terminal calls (SendTaskSuccess / SendTaskFailure) on the wire at once, for the whole
process, and how many the worker gets answered per second.

Without a bound, answers that fall due together each opened a connection: at the end of
a shutdown with 2,000 tasks in flight, 2,000 requests started at once, their CPU
interleaved on the one loop so that none finished (connects timed out), and none was
answered inside a 2 s grace. With at most ``limit`` attempts on the wire the rest wait
their turn, the oldest task first, and answers leave at the rate the endpoint and the
worker's own CPU allow. A retry waits its backoff without a turn, then queues again with
its task's age.

The gate also keeps a cheap measure of that rate for the shutdown's failure reserve: a
moving average of every attempt's round trip, and, while answers are backlogged (more
pending than turns: waiting for one, or backing off after a throttle), how many tokens are
settled per second: the rate at the cap, CPU and throttling included.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

# Attempts on the wire at once, process-wide. Measured (bench/, shutdown at scale, two
# shared cores): without a bound, none of 2,000 answers arrived inside a 2 s grace; with
# 32, 64, 128 or 256, 1,000-1,500 answers/s, the differences smaller than the noise
# between runs (the loop's CPU is the limit; 256 once left the process late). 64 at a
# 50 ms round trip still carry 1,280 answers/s, beyond an account's SendTaskSuccess quota
# (500/s), and normal throughput is unchanged (50 ms calls, 1,000 slots, 1 s handlers).
MAX_ANSWERING = 64
# Before any measurement: below what one core gets through botocore (1-2 ms of CPU each)
# and below an account's SendTaskFailure refill (500/s in the largest regions).
DEFAULT_ANSWERS_PER_SECOND = 400.0
# Weight of the newest round trip in the moving average.
RTT_WEIGHT = 0.05
# While answers are backlogged, settled ones are counted over windows this long; each
# window's rate is averaged with what was measured before.
RATE_WINDOW_SECONDS = 0.5


class AnswerGate:
    def __init__(self, limit: int | None = None) -> None:
        self.limit = MAX_ANSWERING if limit is None else limit
        self._sending = 0  # turns taken: attempts on the wire
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._pending = 0  # answers being sent: on the wire, waiting, backing off
        self._rtt: float | None = None  # seconds, moving average of every attempt
        self._backlog_rate: float | None = None  # settled per second while backlogged
        self._window_start = 0.0
        self._window_settled = 0

    # -- one answer ----------------------------------------------------------------------
    def begin(self) -> None:
        """An answer starts: it is pending until ``end``."""
        self._pending += 1
        if self._pending == self.limit + 1:  # a backlog starts: measure from now
            self._window_start = asyncio.get_running_loop().time()
            self._window_settled = 0

    def settled(self) -> None:
        """The answer got through (or its task was found closed)."""
        if self._pending <= self.limit:
            return
        self._window_settled += 1
        now = asyncio.get_running_loop().time()
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW_SECONDS:
            sample = self._window_settled / elapsed
            old = self._backlog_rate
            self._backlog_rate = sample if old is None else (old + sample) / 2
            self._window_start, self._window_settled = now, 0

    def end(self) -> None:
        self._pending -= 1

    # -- one attempt ---------------------------------------------------------------------
    async def acquire(self, age: float) -> float:
        """Wait for a turn; tasks that started earlier (smaller ``age``, loop time) go
        first. Returns when the turn began, to hand back to ``release``."""
        loop = asyncio.get_running_loop()
        if self._sending < self.limit and not self._waiting:
            self._sending += 1
            return loop.time()
        turn: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiting, (age, next(self._order), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancelled():  # handed a turn just as we were cancelled: pass it on
                self._pass_turn()
            raise
        return loop.time()

    def release(self, began: float) -> None:
        """The attempt that took its turn at ``began`` is over, answered or not."""
        rtt = asyncio.get_running_loop().time() - began
        self._rtt = rtt if self._rtt is None else self._rtt + RTT_WEIGHT * (rtt - self._rtt)
        self._pass_turn()

    def _pass_turn(self) -> None:
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():  # skip waiters cancelled meanwhile
                turn.set_result(None)
                return
        self._sending -= 1

    # -- what the shutdown asks ----------------------------------------------------------
    def answers_per_second(self) -> float:
        """What the worker can answer per second: as measured while answers were
        backlogged, else the default; never more than the cap's worth of round trips."""
        rate = self._backlog_rate
        if rate is None:
            rate = DEFAULT_ANSWERS_PER_SECOND
        if self._rtt:
            rate = min(rate, self.limit / self._rtt)
        return rate

    def on_the_wire(self) -> int:
        """Attempts sent and not answered: at the deadline, each may have been recorded."""
        return self._sending
