"""What a task ends with: the one terminal call the worker will send for its token."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any

from ..errors import (
    INVALID_INPUT_ERROR,
    INVALID_OUTPUT_ERROR,
    MAX_CAUSE_CHARS,
    MAX_ERROR_CHARS,
    MAX_OUTPUT_BYTES,
    OUTPUT_TOO_LARGE_ERROR,
    HandlerExited,
    HandlerProcessDied,
    RemoteHandlerError,
    error_name,
    truncate,
)
from ..exceptions import TaskFailed


@dataclass(frozen=True)
class Success:
    output: str  # JSON text, already checked against the size limit


@dataclass(frozen=True)
class Failure:
    error: str
    cause: str

    @classmethod
    def of(cls, error: str, cause: str) -> Failure:
        """A failure the API accepts: UTF-8 text within 256 (error) and 32,768 (cause) chars."""
        return cls(
            truncate(_encodable(error) or "Error", MAX_ERROR_CHARS),
            truncate(_encodable(cause), MAX_CAUSE_CHARS),
        )


def _encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot carry (lone surrogates) replaced by '?'."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="replace").decode()
    return text


Outcome = Success | Failure

# SendTaskFailure with neither error nor cause needs no KMS permission: the last way to
# answer a token of a KMS-encrypted activity when KMS refuses the real answer.
BARE_FAILURE = Failure("", "")


def decode_input(raw: str | None) -> Any:
    """The task input as Python data; raises ValueError with a readable message."""
    try:
        return json.loads(raw if raw is not None else "null")
    except json.JSONDecodeError as exc:
        raise ValueError(f"task input is not valid JSON ({exc})") from None


def invalid_input(problem: ValueError) -> Failure:
    return Failure.of(INVALID_INPUT_ERROR, str(problem))


def encode_output(result: Any) -> Outcome:
    """Success with JSON text, or a clear failure when the result cannot be sent."""
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited: close it, or Python warns at collection
        return Failure.of(
            INVALID_OUTPUT_ERROR,
            f"handler returned an awaitable ({type(result).__name__}) instead of a value; "
            "declare the handler 'async def', or await it inside",
        )
    try:
        output = json.dumps(result, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except Exception as exc:  # noqa: BLE001 - whatever the value does while encoded is its fault
        return Failure.of(
            INVALID_OUTPUT_ERROR,
            f"handler returned a value that is not JSON-serialisable "
            f"({type(result).__name__}): {_describe(exc)}",
        )
    try:
        size = len(output.encode())
    except UnicodeEncodeError as exc:
        return Failure.of(
            INVALID_OUTPUT_ERROR,
            "handler returned text that cannot be encoded as UTF-8: a lone surrogate "
            f"{output[exc.start]!a} at character {exc.start} of its JSON",
        )
    if size > MAX_OUTPUT_BYTES:
        return Failure.of(
            OUTPUT_TOO_LARGE_ERROR,
            f"handler output is {size:,} bytes of JSON; Step Functions accepts at most "
            f"{MAX_OUTPUT_BYTES:,}. Store large results elsewhere (e.g. S3) "
            "and return a reference.",
        )
    return Success(output)


def from_exception(exc: BaseException) -> Failure:
    name = error_name(exc)
    if isinstance(exc, HandlerExited):
        exc = exc.original
    if isinstance(exc, TaskFailed):
        return Failure.of(name, str(exc.cause))
    if isinstance(exc, HandlerProcessDied):
        return Failure.of(name, f"{exc}; the task was not finished")
    if isinstance(exc, RemoteHandlerError):
        return Failure.of(name, f"handler raised {exc}")
    return Failure.of(name, f"handler raised {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    """``Type: message``, also for exceptions whose ``__str__`` itself fails."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the task
        message = "<the exception's message could not be read>"
    return f"{name}: {message}" if message else name  # "handler raised KeyError"
