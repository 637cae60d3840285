"""The exceptions the worker raises to its users, under one base class.

``SfnWorkerError`` catches all of them; ``TaskFailed`` is the one users raise themselves.
"""

from __future__ import annotations


class SfnWorkerError(Exception):
    """Base class of every exception sfn_worker raises to its users."""


class TaskFailed(SfnWorkerError):
    """Raise from a handler to fail the task with a chosen error name and cause."""

    def __init__(self, error: str, cause: str = "") -> None:
        super().__init__(error, cause)
        self.error = error
        self.cause = cause

    def __str__(self) -> str:
        return f"{self.error}: {self.cause}" if self.cause else self.error


class FatalWorkerError(SfnWorkerError):
    """The worker cannot go on (no such activity, access denied, no credentials)."""


class LifespanFailed(SfnWorkerError):
    """The app's lifespan raised on entry; nothing was polled."""


class WorkerCrashed(SfnWorkerError):
    """A defect in the worker itself stopped it (after answering what ran)."""
