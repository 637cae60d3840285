"""The SQS message that carried a callback task: the queue source's delivery of a Task."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...task import Task


@dataclass(eq=False)
class SqsMessage:
    """A second delivery of the same message while its task runs brings a new receipt
    handle, which replaces this one."""

    message_id: str
    receipt_handle: str = field(repr=False)
    receive_count: int = 1


def message_of(task: Task) -> SqsMessage:
    """The message a callback queue's task came in (the queue source made the task)."""
    assert isinstance(task.delivery, SqsMessage), "a callback queue's task carries its message"
    return task.delivery
