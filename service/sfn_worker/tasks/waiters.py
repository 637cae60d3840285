"""Coroutines waiting their turn, woken first come first served: what Slots and OpenPolls
share. asyncio.Condition would wake them too, but needs a lock held around every check of
a plain counter, on the path of every poll."""

from __future__ import annotations

import asyncio
from collections import deque


class Waiters:
    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        """Until ``wake`` picks this one; the caller checks its condition again."""
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.wake()  # woken and cancelled at once: pass the wake-up on
            raise
        finally:
            if waiter in self._queue:
                self._queue.remove(waiter)

    def wake(self, count: int = 1) -> None:
        """Wake up to ``count`` waiters, the longest waiting first."""
        while count > 0 and self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1
