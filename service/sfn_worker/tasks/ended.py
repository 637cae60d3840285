"""How a task ended: the one closed vocabulary that the runner's steps return and that logs,
metrics, spans, the sender and the task's source read.

Four shapes, each a frozen dataclass, matched by type (never decoded from a string):

- ``Answered``: the one terminal call is recorded (now, or by an earlier attempt).
- ``Closed``: the service closed the task before it was answered (a heartbeat, a
  redelivery check, or the terminal call itself was told so); nothing more is sent.
- ``Released``: not answered, on purpose: another worker can take it (callback queues).
- ``Unanswered``: the terminal call kept failing, or the shutdown's deadline came first;
  the service's timeout decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from .outcome import Outcome, Success

# The service's answer that says it cannot read the token at all.
MALFORMED_TOKEN = "InvalidToken"


@dataclass(frozen=True, slots=True)
class Answered:
    sent: Outcome  # what was sent: the outcome, or what replaced it (invalid output, KMS)
    recorded_earlier: bool = False  # an earlier attempt got through (TaskTimedOut on a retry)

    @property
    def outcome(self) -> str:
        return "succeeded" if isinstance(self.sent, Success) else "failed"

    @property
    def error(self) -> str | None:
        if isinstance(self.sent, Success):
            return None
        return self.sent.error or "(none)"  # a bare failure, after KMS refused the answer


@dataclass(frozen=True, slots=True)
class Closed:
    answer: str  # the service's error code that said so (for the log line)
    malformed: bool = False  # the service cannot read the token (InvalidToken)
    at_answer: bool = False  # found by the terminal call, not before it

    @classmethod
    def by(cls, code: str, *, at_answer: bool = False) -> Closed:
        return cls(code, code == MALFORMED_TOKEN, at_answer)

    @property
    def outcome(self) -> str:
        return "task_gone" if self.at_answer else "gone"


@dataclass(frozen=True, slots=True)
class Released:
    @property
    def outcome(self) -> str:
        return "released"


@dataclass(frozen=True, slots=True)
class Unanswered:
    out_of_time: bool = False  # the shutdown's deadline, not the service, stopped the call

    @property
    def outcome(self) -> str:
        return "out_of_time" if self.out_of_time else "gave_up"


TaskEnd = Answered | Closed | Released | Unanswered

RELEASED = Released()
