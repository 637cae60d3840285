"""One log line for an exception: its code and message, token-like runs redacted, bounded;
and the one hint worth giving when connections fail for want of file descriptors."""

from __future__ import annotations

import errno
import re
import resource
from collections.abc import Iterator

import structlog
from botocore.exceptions import ClientError

from .aws_errors import error_code
from .errors import truncate

log = structlog.get_logger("sfn_worker.errors")


# Long unbroken runs of token-like characters: a service message may echo a task token.
_SECRET_LIKE = re.compile(r"[A-Za-z0-9+/=_\-]{64,}")
MAX_DESCRIBED_CHARS = 300


def describe(exc: BaseException) -> str:
    """One line for logs: error code and message, never request parameters or tokens."""
    if isinstance(exc, ClientError):
        message = str(exc.response.get("Error", {}).get("Message", ""))
        text = f"{error_code(exc)}: {message}" if message else error_code(exc)
    else:
        detail = str(exc)
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    if out_of_file_descriptors(exc):
        text = f"{text} (too many open files)"
        _say_out_of_file_descriptors()
    return truncate(_SECRET_LIKE.sub("<redacted>", text), MAX_DESCRIBED_CHARS)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: chained exceptions, botocore's ``error``, aiohttp's
    ``os_error`` (botocore reports a socket that could not be opened as "Could not
    connect")."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        kwargs = getattr(current, "kwargs", None)
        wrapped = kwargs.get("error") if isinstance(kwargs, dict) else None
        pending += [current.__cause__, current.__context__, getattr(current, "os_error", None)]
        if isinstance(wrapped, BaseException):
            pending.append(wrapped)


def out_of_file_descriptors(exc: BaseException) -> bool:
    return any(
        isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE) for e in _causes(exc)
    )


_said_out_of_file_descriptors = False


def _say_out_of_file_descriptors() -> None:
    """Once per process: the real cause of connections that cannot open, with the limit."""
    global _said_out_of_file_descriptors
    if _said_out_of_file_descriptors:
        return
    _said_out_of_file_descriptors = True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.error(
        "out of file descriptors: connections cannot be opened",
        open_files_limit=soft,
        hard_limit=hard,
        hint="raise the limit: ECS task definition ulimits nofile (softLimit/hardLimit), "
        "docker run --ulimit nofile=65536:65536, systemd LimitNOFILE; or lower "
        "SFN_CONCURRENCY",
    )
