"""What a task ends with: the one terminal call the worker will send for its token."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import (
    INVALID_INPUT_ERROR,
    INVALID_OUTPUT_ERROR,
    MAX_CAUSE_CHARS,
    MAX_ERROR_CHARS,
    MAX_OUTPUT_BYTES,
    OUTPUT_TOO_LARGE_ERROR,
    TaskFailed,
    truncate,
)


@dataclass(frozen=True)
class Success:
    output: str  # JSON text, already checked against the size limit


@dataclass(frozen=True)
class Failure:
    error: str
    cause: str

    @classmethod
    def of(cls, error: str, cause: str) -> Failure:
        """A failure that fits the API limits (error 256 chars, cause 32,768 chars)."""
        return cls(truncate(error or "Error", MAX_ERROR_CHARS), truncate(cause, MAX_CAUSE_CHARS))


Outcome = Success | Failure


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
    try:
        output = json.dumps(result, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        return Failure.of(
            INVALID_OUTPUT_ERROR,
            f"handler returned a value that is not JSON-serialisable "
            f"({type(result).__name__}): {exc}",
        )
    size = len(output.encode())
    if size > MAX_OUTPUT_BYTES:
        return Failure.of(
            OUTPUT_TOO_LARGE_ERROR,
            f"handler output is {size:,} bytes of JSON; Step Functions accepts at most "
            f"{MAX_OUTPUT_BYTES:,}. Store large results elsewhere (e.g. S3) "
            "and return a reference.",
        )
    return Success(output)


def from_exception(exc: BaseException) -> Failure:
    if isinstance(exc, TaskFailed):
        return Failure.of(exc.error, exc.cause)
    message = str(exc)
    cause = f"{type(exc).__name__}: {message}" if message else f"{type(exc).__name__} raised"
    return Failure.of(type(exc).__name__, f"handler raised {cause}")
