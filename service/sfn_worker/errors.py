"""What a task fails with: Step Functions' limits on an answer, the error names the worker
sends, and the exceptions that carry a handler's failure to its answer."""

from __future__ import annotations

import signal

from .exceptions import TaskFailed

# Step Functions API limits (SendTaskSuccess / SendTaskFailure).
MAX_OUTPUT_BYTES = 262_144
MAX_ERROR_CHARS = 256
MAX_CAUSE_CHARS = 32_768
TRUNCATION_MARK = "…[truncated]"

# Error names the worker itself sends; stable so state machines can Retry/Catch on them.
SHUTDOWN_ERROR = "Worker.Shutdown"
INVALID_INPUT_ERROR = "Worker.InvalidInput"
INVALID_OUTPUT_ERROR = "Worker.InvalidOutput"
OUTPUT_TOO_LARGE_ERROR = "Worker.OutputTooLarge"
PROCESS_DIED_ERROR = "Worker.HandlerProcessDied"


class HandlerExited(Exception):
    """An async handler raised SystemExit or KeyboardInterrupt: its task fails, not the worker.

    asyncio lets those two escape the event loop and end the process; the handler's call is
    wrapped so they arrive here instead, and the task fails named after the original.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(type(original).__name__)
        self.original = original


class HandlerProcessDied(Exception):
    """The process running a process-mode handler ended before it answered."""

    def __init__(self, pid: int | None, exitcode: int | None, detail: str = "") -> None:
        super().__init__(pid, exitcode, detail)
        self.pid = pid
        self.exitcode = exitcode
        self.detail = detail

    def __str__(self) -> str:
        text = f"the handler process (pid {self.pid}) {describe_exit(self.exitcode)}"
        return f"{text}: {self.detail}" if self.detail else text


def describe_exit(exitcode: int | None) -> str:
    """How a process ended, from ``Process.exitcode`` (negative: killed by that signal)."""
    if exitcode is None:
        return "ended without an exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {name} ({-exitcode})"
    return f"exited with code {exitcode}"


class RemoteHandlerError(Exception):
    """An exception a process-mode handler raised, as it crossed back to the worker.

    Exceptions do not always survive pickling (required constructor arguments, classes
    only the child knows), so the child sends the type's name and message instead.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


def error_name(exc: BaseException) -> str:
    """The error name a task fails with when its handler raised ``exc``."""
    if isinstance(exc, HandlerExited):
        exc = exc.original
    if isinstance(exc, TaskFailed):
        return str(exc.error)
    if isinstance(exc, HandlerProcessDied):
        return PROCESS_DIED_ERROR
    if isinstance(exc, RemoteHandlerError):
        return exc.type_name
    return type(exc).__name__


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK
