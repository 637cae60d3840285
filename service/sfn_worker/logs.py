"""structlog setup: JSON (default) or console lines, with per-task context from contextvars."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from .settings import LogFormat, LogLevel


def configure_logging(
    level: LogLevel, fmt: LogFormat, worker_name: str, stream: TextIO | None = None
) -> None:
    renderer: structlog.typing.Processor
    if fmt is LogFormat.CONSOLE:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.value)),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(worker=worker_name)
    # botocore and aiohttp log through stdlib logging; keep their warnings, drop their chatter.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s"
    )
