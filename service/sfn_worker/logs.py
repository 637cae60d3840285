"""structlog setup: JSON (default) or console lines, with per-task context from contextvars.

Records from the standard library (asyncio, aiohttp, botocore, OpenTelemetry's exporters)
and Python warnings go through the same renderer, so every line on stderr has one format;
those libraries log WARNING and above only, since botocore logs request bodies, task
payloads included, at DEBUG. Handler processes (process mode) are configured the same way
(``current_log_config``).

Every line, whoever produced it, is bounded (``MAX_LINE_BYTES``) and has long runs of
token characters redacted (a task token inside an exception's message, say): a cheap check
of the rendered line, and only a line that fails it is rendered again with each value
redacted and cut (head and tail kept).

Lines leave through ``streams.OutputStream`` (a write that cannot wait, else a bounded
buffer written to stderr by a thread of its own), so a stderr nobody reads never blocks the
event loop (full: lines are dropped, counted, and a notice says how many where they were
missing); a broken stderr never stops the worker.

A busy worker logs two lines per task, so the JSON path is kept cheap (measured in
bench/, about a third of the cost of structlog's defaults): orjson renders straight to
bytes, and the timestamp's date and time are formatted once per second.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import string
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from .settings import LogFormat, LogLevel
from .streams import STDERR_BUFFER_BYTES, OutputStream, close, open_stream

if TYPE_CHECKING:
    from .bulkhead import Accessory

# Docker's log drivers split longer lines into partial messages (16 KiB); CloudWatch Logs
# takes events up to 256 KiB. A longer line is rendered again with its values cut.
MAX_LINE_BYTES = 16_384
FIELD_CHARS = 4_096  # a value's first cut on that second rendering (head and tail kept)
CUT_MARK = "…[truncated]…"
# A run of token characters longer than any name the worker logs (activity, queue and
# worker names: at most 80) is a secret or a payload: task tokens run to hundreds.
SECRET_RUN = 81
REDACTED = "<redacted>"
_TOKEN_CHARS = (string.ascii_letters + string.digits + "+/=_-").encode()
_RUN_TABLE = bytes(0x61 if byte in _TOKEN_CHARS else 0x20 for byte in range(256))
_RUN = b"a" * SECRET_RUN
_SECRET_TEXT = re.compile(rf"[A-Za-z0-9+/=_\-]{{{SECRET_RUN},}}")

ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE

# Installed by configure_logging; replaced (not duplicated) when it runs again.
_stdlib_handler: logging.Handler | None = None
_stream: OutputStream | None = None


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


def _fallback(value: Any) -> Any:
    """What neither JSON encoder knows: its repr (structlog's JSONRenderer does the same)."""
    return repr(value)


def dumps_line(event: Any) -> bytes:
    """One JSON line (with its newline) by orjson, or the standard library for what orjson
    refuses (lone surrogates, integers beyond 64 bits): a log call never fails on its
    values."""
    try:
        return orjson.dumps(event, default=_fallback, option=ORJSON_OPTIONS)
    except TypeError:
        text = json.dumps(event, default=_fallback)
        return text.encode("utf-8", "backslashreplace") + b"\n"


def suspect(line: bytes) -> bool:
    """Too long, or holding a run of token characters (a translate and a substring search:
    a fraction of a microsecond for a task's line, several times cheaper than a regex)."""
    return len(line) > MAX_LINE_BYTES or _RUN in line.translate(_RUN_TABLE)


def _cut(text: str, limit: int) -> str:
    text = _SECRET_TEXT.sub(REDACTED, text)
    if len(text) <= limit:
        return text
    half = max(1, (limit - len(CUT_MARK)) // 2)
    return text[:half] + CUT_MARK + text[-half:]


def _clean(value: Any, limit: int) -> Any:
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    return _cut(value if isinstance(value, str) else repr(value), limit)


def bounded(
    event_dict: EventDict, render: Callable[[EventDict], bytes], *, copy: bool = False
) -> bytes:
    """``render(event_dict)``, redacted and at most MAX_LINE_BYTES. ``copy``: the renderer
    consumes the dict (structlog's ConsoleRenderer pops its keys)."""
    line = render(dict(event_dict) if copy else event_dict)
    if not suspect(line):
        return line
    limit = FIELD_CHARS
    while limit >= 64:
        line = render({_cut(str(k), 64): _clean(v, limit) for k, v in event_dict.items()})
        if len(line) <= MAX_LINE_BYTES:
            return line
        limit //= 2
    # Thousands of fields: keep what says what happened.
    keep = ("event", "level", "timestamp", "logger", "worker")
    return render({k: _clean(event_dict[k], 1024) for k in keep if k in event_dict})


def render_json(logger: WrappedLogger, name: str, event_dict: EventDict) -> bytes:
    return bounded(event_dict, dumps_line)


def render_json_text(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
    """For the standard library's records (ProcessorFormatter wants text, no newline)."""
    return bounded(event_dict, dumps_line)[:-1].decode()


class _ConsoleLine:
    """structlog's ConsoleRenderer, bounded and redacted like the JSON lines."""

    def __init__(self, colors: bool) -> None:
        self._renderer = structlog.dev.ConsoleRenderer(colors=colors)

    def _render(self, event_dict: EventDict) -> bytes:
        text = self._renderer(None, "", event_dict)
        return text.encode("utf-8", "backslashreplace") + b"\n"

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> bytes:
        return bounded(event_dict, self._render, copy=True)

    def text(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        return self(logger, name, event_dict)[:-1].decode()


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


class _TextSink:
    """A stream without a file descriptor (a test's StringIO): written at once."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, data: bytes, records: int = 1) -> bool:
        self._stream.write(data.decode())
        self._stream.flush()
        return True


Sink = OutputStream | _TextSink


class LineLogger:
    """structlog's logger: hands each rendered line to the sink (which never blocks)."""

    __slots__ = ("_write",)

    def __init__(self, sink: Sink) -> None:
        self._write = sink.write

    def msg(self, message: bytes) -> None:
        self._write(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _StdlibHandler(logging.Handler):
    """Standard library records, rendered by ProcessorFormatter, into the same sink."""

    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self._write = sink.write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a logging.Handler reports its own failures
            self.handleError(record)
            return
        self._write(line.encode("utf-8", "backslashreplace") + b"\n")


def _sink(stream: TextIO | None) -> tuple[Sink, bool]:
    """Where lines go, and whether it is a terminal. stderr (or a stream with a file
    descriptor) gets an OutputStream; text streams without one are written directly."""
    if stream is None:
        stream = sys.stderr
    try:
        fd = stream.fileno() if stream is not None else 2
    except (io.UnsupportedOperation, ValueError):
        assert stream is not None
        return _TextSink(stream), stream.isatty()
    if stream is not None:
        with contextlib.suppress(OSError, ValueError):  # broken or closed: nothing to keep
            stream.flush()  # text written so far goes first
    return open_stream(fd, "stderr", limit_bytes=STDERR_BUFFER_BYTES), os.isatty(fd)


def configure_logging(
    level: LogLevel, fmt: LogFormat, worker_name: str, stream: TextIO | None = None
) -> None:
    global _stdlib_handler, _stream, _current
    _current = LogConfig(level, fmt, worker_name) if stream is None else None
    _close_stream()
    sink, tty = _sink(stream)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        UtcTimestamp(),
    ]
    renderer: structlog.typing.Processor
    stdlib_renderer: structlog.typing.Processor
    if fmt is LogFormat.CONSOLE:
        console = _ConsoleLine(colors=tty)
        renderer, stdlib_renderer = console, console.text
    else:
        renderer, stdlib_renderer = render_json, render_json_text
    logger = LineLogger(sink)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.value)),
        logger_factory=lambda *_: logger,
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(worker=worker_name)
    if isinstance(sink, OutputStream):
        sink.gap_notice = _gap_notice(renderer, worker_name)
        _stream = sink

    handler = _StdlibHandler(sink)
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


def _gap_notice(render: structlog.typing.Processor, worker_name: str) -> Callable[[int], bytes]:
    """The line that stands where lines were dropped (rendered on the writer's side)."""
    stamp = UtcTimestamp()

    def notice(dropped: int) -> bytes:
        event: EventDict = {
            "event": "log lines dropped: stderr was not read fast enough",
            "dropped": dropped,
            "worker": worker_name,
            "level": "warning",
        }
        line = render(None, "warning", stamp(None, "warning", event))
        assert isinstance(line, bytes)
        return line

    return notice


def report_to(accessory: Accessory) -> None:
    """Dropped lines are counted, and a broken stderr is shown, through ``accessory``."""
    if _stream is not None:
        _stream.report_to(accessory.drop, lambda error: accessory.failed(error, stopped=True))


def _close_stream() -> None:
    global _stream
    if _stream is not None:
        close(_stream, 1.0)
        _stream = None


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
    _close_stream()
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
