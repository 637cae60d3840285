"""structlog setup: JSON (default) or console lines, with per-task context from contextvars.

Records from the standard library (asyncio, aiohttp, botocore, OpenTelemetry's exporters)
and Python warnings go through the same renderer, so every line on stderr has one format;
those libraries log WARNING and above only, since botocore logs request bodies, task
payloads included, at DEBUG. Handler processes (process mode) are configured the same way
(``current_log_config``).

A busy worker logs two lines per task, so the JSON path is kept cheap (measured in
bench/, about a third of the cost of structlog's defaults): orjson renders straight to
bytes, written to the stream's binary buffer, and the timestamp's date and time are
formatted once per second.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO, cast

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from .settings import LogFormat, LogLevel

# Installed by configure_logging; replaced (not duplicated) when it runs again.
_stdlib_handler: logging.Handler | None = None


@dataclass(frozen=True)
class LogConfig:
    """What configure_logging was given, for a handler process to do the same."""

    level: LogLevel
    fmt: LogFormat
    worker_name: str


# threading.excepthook as it was before configure_logging replaced it.
_hooks_replaced: list[Callable[[threading.ExceptHookArgs], object]] = []

# The process's configuration on its standard error (None: not configured, or a test's
# stream).
_current: LogConfig | None = None


def current_log_config() -> LogConfig | None:
    return _current


ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def _fallback(value: Any) -> Any:
    """What neither JSON encoder knows: its repr (structlog's JSONRenderer does the same)."""
    return repr(value)


def dumps_bytes(event: Any, **_: Any) -> bytes:
    """orjson, or the standard library for what orjson refuses (lone surrogates, integers
    beyond 64 bits): a log call never fails on its values."""
    try:
        return orjson.dumps(event, default=_fallback, option=ORJSON_OPTIONS)
    except TypeError:
        return json.dumps(event, default=_fallback).encode("utf-8", "backslashreplace")


def dumps_text(event: Any, **kwargs: Any) -> str:
    return dumps_bytes(event, **kwargs).decode()


class UtcTimestamp:
    """``timestamp``: ISO 8601 UTC with microseconds, like structlog's TimeStamper(fmt="iso",
    utc=True), the date and time formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


class _BytesToText:
    """A text stream seen as a binary one (a test's StringIO has no buffer)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, data: bytes) -> None:
        self._stream.write(data.decode())

    def flush(self) -> None:
        self._stream.flush()


def _binary(stream: TextIO) -> BinaryIO:
    """The stream's binary buffer; stderr is line-buffered text, so lines written through
    either layer keep their order."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        stream.flush()  # text written so far goes first
        return cast(BinaryIO, buffer)
    return cast(BinaryIO, _BytesToText(stream))


def configure_logging(
    level: LogLevel, fmt: LogFormat, worker_name: str, stream: TextIO | None = None
) -> None:
    global _stdlib_handler, _current
    _current = LogConfig(level, fmt, worker_name) if stream is None else None
    output = stream or sys.stderr
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        UtcTimestamp(),
    ]
    renderer: structlog.typing.Processor
    stdlib_renderer: structlog.typing.Processor
    logger_factory: Callable[..., Any]
    if fmt is LogFormat.CONSOLE:
        renderer = stdlib_renderer = structlog.dev.ConsoleRenderer(colors=output.isatty())
        logger_factory = structlog.WriteLoggerFactory(file=output)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=dumps_bytes)
        stdlib_renderer = structlog.processors.JSONRenderer(serializer=dumps_text)
        logger_factory = structlog.BytesLoggerFactory(file=_binary(output))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.value)),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(worker=worker_name)

    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                stdlib_renderer,
            ],
        )
    )
    root = logging.getLogger()
    if _stdlib_handler is not None:
        root.removeHandler(_stdlib_handler)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, logging.getLevelName(level.value)))
    _stdlib_handler = handler
    logging.captureWarnings(True)  # warnings.warn() becomes a log line, not raw text
    if threading.excepthook is not _log_uncaught_in_thread:
        _hooks_replaced.append(threading.excepthook)
        threading.excepthook = _log_uncaught_in_thread  # not a raw traceback either


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # as the default hook: a thread that exits is not an error
    structlog.get_logger("sfn_worker").error(
        "uncaught exception in a thread",
        thread=args.thread.name if args.thread is not None else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def reset_logging() -> None:
    """Undo configure_logging (for tests and embedders)."""
    global _stdlib_handler, _current
    _current = None
    logging.captureWarnings(False)
    if _hooks_replaced:
        threading.excepthook = _hooks_replaced.pop()
    if _stdlib_handler is not None:
        logging.getLogger().removeHandler(_stdlib_handler)
        _stdlib_handler = None
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _forget_cached_loggers()


def _forget_cached_loggers() -> None:
    """configure_logging caches each module's logger on first use (cheaper log calls);
    a reset must drop those caches too, or the modules keep logging the old way (a test's
    ``capture_logs`` would see nothing of them). The cache is the proxy's bound ``bind``."""
    for name, module in list(sys.modules.items()):
        if name == "sfn_worker" or name.startswith("sfn_worker."):
            proxy = getattr(module, "log", None)
            if proxy is not None and "bind" in vars(proxy):
                del proxy.bind
