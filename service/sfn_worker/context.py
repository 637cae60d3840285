"""What a handler gets besides its input."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field


def token_hash(task_token: str) -> str:
    """A short, stable name for a token that is safe to log (tokens are bearer secrets)."""
    return hashlib.sha256(task_token.encode()).hexdigest()[:12]


@dataclass(eq=False)
class TaskContext:
    """Passed to every handler as its second argument.

    ``cancel_requested`` is set when the worker wants the handler to stop (the task timed out
    at Step Functions, or the shutdown grace ran out). Async handlers also get CancelledError;
    sync handlers running in threads cannot be interrupted and should check it between steps.

    ``shutdown_requested`` is set as soon as the worker is asked to stop, so a long job can
    save progress and finish (or raise) before the grace period ends.
    """

    task_token: str = field(repr=False)
    worker_name: str
    activity_arn: str
    token_hash: str = ""
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    shutdown_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    _shutdown_event: asyncio.Event | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.token_hash:
            self.token_hash = token_hash(self.task_token)

    async def wait_for_shutdown(self) -> None:
        """For async handlers: returns once the worker has been asked to stop."""
        if self._shutdown_event is None:
            await asyncio.Event().wait()
        else:
            await self._shutdown_event.wait()
