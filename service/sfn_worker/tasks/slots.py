"""Slots: how many tasks a source may work at once; nothing is polled without a free one.

One counter for the limit. A poller takes one slot before GetActivityTask; a receiver takes
one, then as many more as are free (up to 10), and asks SQS for that many messages. A slot
comes back when its task's handler has really stopped.
"""

from __future__ import annotations

from .waiters import Waiters


class Slots:
    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._waiters = Waiters()

    def free(self) -> int:
        return self._free

    async def take(self, most: int = 1) -> int:
        """Wait for a free slot, then take it and up to ``most - 1`` more that are free."""
        while self._free <= 0:
            await self._waiters.wait()
        taken = min(most, self._free)
        self._free -= taken
        return taken

    def give(self, count: int = 1) -> None:
        self._free += count
        self._waiters.wake(count)
