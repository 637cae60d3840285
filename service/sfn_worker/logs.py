"""structlog setup: JSON (default) or console lines, with per-task context from contextvars.

Records from the standard library (asyncio, aiohttp, botocore) go through the same
renderer, so every line on stderr has one format; those libraries log WARNING and above
only, since botocore logs request bodies, task payloads included, at DEBUG.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from .settings import LogFormat, LogLevel

# Installed by configure_logging; replaced (not duplicated) when it runs again.
_stdlib_handler: logging.Handler | None = None


def configure_logging(
    level: LogLevel, fmt: LogFormat, worker_name: str, stream: TextIO | None = None
) -> None:
    global _stdlib_handler
    output = stream or sys.stderr
    renderer: structlog.typing.Processor
    if fmt is LogFormat.CONSOLE:
        renderer = structlog.dev.ConsoleRenderer(colors=output.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.value)),
        logger_factory=structlog.WriteLoggerFactory(file=output),
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
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    if _stdlib_handler is not None:
        root.removeHandler(_stdlib_handler)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, logging.getLevelName(level.value)))
    _stdlib_handler = handler


def reset_logging() -> None:
    """Undo configure_logging (for tests and embedders)."""
    global _stdlib_handler
    if _stdlib_handler is not None:
        logging.getLogger().removeHandler(_stdlib_handler)
        _stdlib_handler = None
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
