"""The unit of work: a task as GetActivityTask handed it out."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ActivityTask:
    """A task handed out by GetActivityTask. ``late``: it arrived after shutdown began."""

    token: str = field(repr=False)
    raw_input: str | None = field(repr=False)
    late: bool = False
