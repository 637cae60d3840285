"""The unit of work: a task token and its input, as a poller or a receiver got them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class SqsMessage:
    """The SQS message that carried a callback task. A second delivery of the same message
    while its task runs brings a new receipt handle, which replaces this one."""

    message_id: str
    receipt_handle: str = field(repr=False)
    receive_count: int = 1


@dataclass(frozen=True, slots=True)
class Task:
    """``input`` is decoded; ``input_problem`` says why it could not be (the task then fails
    with Worker.InvalidInput). ``late``: it arrived after shutdown began."""

    token: str = field(repr=False)
    input: Any = field(repr=False)
    input_problem: str | None = None
    late: bool = False
    message: SqsMessage | None = None
