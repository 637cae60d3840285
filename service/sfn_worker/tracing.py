"""Tracing: what the worker's parts call, whether OpenTelemetry is on or not.

OpenTelemetry (the ``otel`` extra, implemented in otel.py) is on when the standard OTEL_*
environment asks for traces: OTEL_TRACES_EXPORTER set to an exporter, or an OTLP endpoint
(OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) given, and
OTEL_SDK_DISABLED not true. Otherwise, and without the extra, nothing is imported and every
call below is a no-op. A configuration the SDK cannot run is refused at start
(otel_config.py); ``close`` ends export within the time the shutdown leaves it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import structlog

from .redact import describe
from .settings import SettingsError

log = structlog.get_logger("sfn_worker.tracing")

OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracing_requested(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name) for name in OTLP_ENDPOINTS)


class HandlerSpan(Protocol):
    def current(self) -> contextlib.AbstractContextManager[None]: ...
    def end_with(self, result: Any) -> None: ...


class TaskSpan(Protocol):
    def activate(self) -> None:
        """Current for the rest of the calling asyncio task (the task's runner has its own
        asyncio task, whose context ends with it: nothing to detach)."""
        ...

    def handler(self, name: str) -> HandlerSpan: ...
    def end(self, outcome: str, error: str | None = None) -> None: ...


class Tracing(Protocol):
    enabled: bool  # False: task() returns NO_SPAN, so callers may skip building attributes

    def task(self, *, source: str, destination: str, attributes: dict[str, str],
             task_input: Any) -> TaskSpan: ...  # fmt: skip
    def carrier(self) -> dict[str, str] | None: ...
    def untraced(self) -> contextlib.AbstractContextManager[None]: ...

    def current(self) -> object | None:
        """The current span (a task's, where its runner works), for a later batch call
        made for several tasks; None without one."""
        ...

    def batch(
        self, name: str, members: Sequence[object | None], attributes: dict[str, str | int]
    ) -> contextlib.AbstractContextManager[None]:
        """Around one call made for several tasks (DeleteMessageBatch): a span of its own,
        linked to each member's span (``current`` when the member asked), current inside."""
        ...

    def event(self, member: object | None, name: str, attributes: dict[str, str | bool]) -> None:
        """An event on a member's span (still open): what the batch did for it."""
        ...

    async def close(self, timeout_seconds: float) -> bool:
        """Export what is left and stop, within ``timeout_seconds``; False if that was not
        enough (the rest is dropped: the process exits without waiting for it)."""
        ...


_NO_CONTEXT = contextlib.nullcontext()


class _NoSpan:
    def activate(self) -> None:
        pass

    def current(self) -> contextlib.AbstractContextManager[None]:
        return _NO_CONTEXT

    def handler(self, name: str) -> _NoSpan:
        return self

    def end_with(self, result: Any) -> None:
        pass

    def end(self, outcome: str, error: str | None = None) -> None:
        pass


NO_SPAN: TaskSpan = _NoSpan()


class NoTracing:
    """Tracing off: shared no-op objects, nothing allocated per task."""

    enabled = False

    def task(
        self, *, source: str, destination: str, attributes: dict[str, str], task_input: Any
    ) -> TaskSpan:
        return NO_SPAN

    def carrier(self) -> dict[str, str] | None:
        return None

    def untraced(self) -> contextlib.AbstractContextManager[None]:
        return _NO_CONTEXT

    def current(self) -> object | None:
        return None

    def batch(
        self, name: str, members: Sequence[object | None], attributes: dict[str, str | int]
    ) -> contextlib.AbstractContextManager[None]:
        return _NO_CONTEXT

    def event(self, member: object | None, name: str, attributes: dict[str, str | bool]) -> None:
        pass

    async def close(self, timeout_seconds: float) -> bool:
        return True


NO_TRACING = NoTracing()


def setup_tracing(
    trace_context_key: str,
    environ: Mapping[str, str] | None = None,
    *,
    service_name: str | None = None,
) -> Tracing:
    """OpenTelemetry tracing when the environment asks for it and the extra is installed;
    ``service_name`` (the worker passes SFN_METRICS_SERVICE_NAME) is the resource's
    service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names one."""
    environ = os.environ if environ is None else environ
    if not tracing_requested(environ):
        return NO_TRACING
    try:
        from . import otel
    except ImportError as exc:
        log.warning(
            "OTEL_* asks for traces, but the otel extra is not installed; tracing is off",
            hint="pip install 'sfn-activity-worker[otel]'",
            error=str(exc),
        )
        return NO_TRACING
    try:
        return otel.OtelTracing.configure(trace_context_key, service_name)
    except Exception as exc:  # what otel_config.py cannot see: an exporter's own checks
        raise SettingsError(
            f"OpenTelemetry cannot start from the OTEL_* variables: {describe(exc)}"
        ) from exc
