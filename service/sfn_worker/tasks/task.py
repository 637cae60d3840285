"""The unit of work: a task token and its input, as a poller or a receiver got them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Task:
    """``input`` is decoded; ``input_problem`` says why it could not be (the task then fails
    with Worker.InvalidInput). ``late``: it arrived after shutdown began. ``delivery``: what
    the source that made the task keeps of how it came (a callback queue's SQS message);
    only that source reads it, so the shared task path knows no kind."""

    token: str = field(repr=False)
    input: Any = field(repr=False)
    input_problem: str | None = None
    late: bool = False
    delivery: object = field(default=None, repr=False)
