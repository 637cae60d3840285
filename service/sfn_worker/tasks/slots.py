"""Slots: how many tasks a source may work at once; nothing is polled without a free one.

One counter for the limit. A poller takes one slot before GetActivityTask; a receiver takes
one, then as many more as are free (up to 10), and asks SQS for that many messages. A slot
comes back when its task's handler has really stopped.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._waiters: deque[asyncio.Future[None]] = deque()

    def free(self) -> int:
        return self._free

    async def take(self, most: int = 1) -> int:
        """Wait for a free slot, then take it and up to ``most - 1`` more that are free."""
        while self._free <= 0:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # Woken and cancelled at once: pass the wake-up on.
                if waiter.done() and not waiter.cancelled():
                    self._wake()
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        taken = min(most, self._free)
        self._free -= taken
        return taken

    def give(self, count: int = 1) -> None:
        self._free += count
        for _ in range(count):
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
