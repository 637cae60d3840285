"""OpenTelemetry tracing (the ``otel`` extra); imported only when tracing is on (tracing.py).

Spans, following the messaging conventions for consumers:

- ``process <source>`` (CONSUMER) per task: messaging.system ("aws.stepfunctions" for an
  activity, "aws_sqs" for a callback queue), messaging.operation.type and .name
  ("process"), messaging.destination.name (the source's name: the activity's or the
  queue's), sfn_worker.source.name and sfn_worker.source.kind ("activity" or "queue"),
  aws.step_functions.activity.arn (activities), messaging.message.id and
  sfn_worker.queue.url (callback queues), sfn_worker.worker.name,
  sfn_worker.task.token_hash, sfn_worker.handler.mode, sfn_worker.outcome and, on failure,
  error.type, an ERROR status and an ``exception`` event with exception.type only (never a
  message: it may quote the payload). Its parent is the W3C trace context in the task
  input (the field SFN_TRACE_CONTEXT_KEY names, "traceparent" by default) when there is one.
- ``handler <source>`` (INTERNAL), its child, around the handler call; the handler's own
  spans are children of it, in process mode too (the context crosses with the call).
- SendTaskHeartbeat / SendTaskSuccess / SendTaskFailure and the SQS ChangeMessageVisibility
  calls (CLIENT), children of their own task's span, from
  opentelemetry-instrumentation-botocore's aiobotocore instrumentor. Long polls
  (GetActivityTask, ReceiveMessage) are not traced.
- ``delete <queue>`` (INTERNAL): one DeleteMessageBatch settles up to ten tasks' messages,
  so it is a root span of its own with a link to each task's span (the SQS CLIENT span is
  its child), and each task's span gets a ``sfn_worker.sqs.delete`` event saying whether
  its message was deleted.
Never the task token, the input, the output or a cause.

When the worker configures the SDK (no provider set before it, as opentelemetry-instrument
or an embedder would), the resource's service.name is SFN_METRICS_SERVICE_NAME's value
unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names one (``default_service_name``);
its handler processes inherit it.

Export is an accessory: spans leave in batches from the SDK's own thread, never on a task's
way to its answer, and the SDK is shut down within a bound the worker sets (``close_sdk``),
never by its exit hook, which waits for a collector that does not answer for 10-30 s.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry._logs import get_logger_provider
from opentelemetry.instrumentation.botocore import AiobotocoreInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import get_meter_provider
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .errors import error_name
from .redact import describe

log = structlog.get_logger("sfn_worker.tracing")

TRACER_NAME = "sfn_worker"
_W3C = TraceContextTextMapPropagator()


def default_service_name(name: str | None, environ: MutableMapping[str, str] = os.environ) -> None:
    """Name the service ``name`` (the SDK would say ``unknown_service:python``) unless the
    user named it: OTEL_SERVICE_NAME, or service.name in OTEL_RESOURCE_ATTRIBUTES. Set in
    the environment, so handler processes (which configure their own SDK) inherit it."""
    if not name or environ.get("OTEL_SERVICE_NAME", "").strip():
        return
    attributes = environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    keys = {pair.split("=", 1)[0].strip() for pair in attributes.split(",") if "=" in pair}
    if "service.name" not in keys:
        environ["OTEL_SERVICE_NAME"] = name


def configure_sdk(service_name: str | None = None) -> bool:
    """The SDK's own configuration from OTEL_* (otel_config.py checked it at start), unless a
    provider is set already (say, under ``opentelemetry-instrument``). The extra ships the
    OTLP/HTTP exporter, so OTLP means http/protobuf unless OTEL_EXPORTER_OTLP_PROTOCOL says
    otherwise; ``service_name`` is the default service.name. True when this call configured
    it: the worker then owns the providers."""
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False
    default_service_name(service_name)
    os.environ.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if not os.environ.get("OTEL_TRACES_EXPORTER"):
        os.environ["OTEL_TRACES_EXPORTER"] = "otlp"  # asked for by an OTLP endpoint
    from opentelemetry.distro import OpenTelemetryConfigurator

    OpenTelemetryConfigurator().configure()  # type: ignore[no-untyped-call]
    return True


def close_sdk(owned: bool) -> threading.Event:
    """Export what the SDK still holds, in a daemon thread; the event is set when done. The
    providers the worker owns are shut down, and their exit hooks dropped first: those wait
    for the exporter without a bound. Others (an embedder's, opentelemetry-instrument's) are
    only flushed. Whoever waits on the event bounds the wait; nothing else waits."""
    providers: list[Any] = [
        provider
        for provider in (trace.get_tracer_provider(), get_meter_provider(), get_logger_provider())
        if hasattr(provider, "shutdown")
    ]
    if owned:
        for provider in providers:
            atexit.unregister(provider.shutdown)
    done = threading.Event()

    def run() -> None:
        try:
            for provider in providers:
                if owned:
                    provider.shutdown()
                else:
                    provider.force_flush()
        except Exception as exc:  # noqa: BLE001 - tracing is an accessory: said, never raised
            log.warning("tracing: closing the exporter failed", error=describe(exc))
        finally:
            done.set()

    threading.Thread(target=run, name="sfn-otel-close", daemon=True).start()
    return done


@contextlib.contextmanager
def attached(carrier: dict[str, str] | None) -> Iterator[None]:
    """Make the context in ``carrier`` current (a handler process, around one call)."""
    if not carrier:
        yield
        return
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def _failed(span: trace.Span, error: str) -> None:
    """A failure by its type: the error name (the handler's exception class, or the error
    it chose), never its message or cause, which may quote the payload; so not
    ``record_exception``, which records both (and the stack)."""
    span.set_attribute("error.type", error)
    span.add_event("exception", {"exception.type": error})
    span.set_status(Status(StatusCode.ERROR, error))


class _HandlerSpan:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def current(self) -> contextlib.AbstractContextManager[Any]:
        return trace.use_span(
            self._span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    def end_with(self, result: asyncio.Future[Any]) -> None:
        result.add_done_callback(self._done)

    def _done(self, result: asyncio.Future[Any]) -> None:
        if result.cancelled():
            self._span.set_status(Status(StatusCode.ERROR, "cancelled"))
        elif (error := result.exception()) is not None:
            _failed(self._span, error_name(error))
        self._span.end()


class _TaskSpan:
    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self._span = span

    def activate(self) -> None:
        otel_context.attach(trace.set_span_in_context(self._span))

    def handler(self, name: str) -> _HandlerSpan:
        context = trace.set_span_in_context(self._span)
        return _HandlerSpan(self._tracer.start_span(f"handler {name}", context=context))

    def end(self, outcome: str, error: str | None = None) -> None:
        self._span.set_attribute("sfn_worker.outcome", outcome)
        if error is not None:
            _failed(self._span, error)
        self._span.end()


class OtelTracing:
    enabled = True

    def __init__(self, trace_context_key: str, *, owned: bool = False) -> None:
        self._key = trace_context_key
        self._owned = owned
        from . import __version__

        self._tracer = trace.get_tracer(TRACER_NAME, __version__)

    @classmethod
    def configure(cls, trace_context_key: str, service_name: str | None = None) -> OtelTracing:
        owned = configure_sdk(service_name)
        instrumentor = AiobotocoreInstrumentor()  # type: ignore[no-untyped-call]
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()
        return cls(trace_context_key, owned=owned)

    async def close(self, timeout_seconds: float) -> bool:
        done = close_sdk(self._owned)
        return await asyncio.to_thread(done.wait, max(0.0, timeout_seconds))

    def task(
        self, *, source: str, destination: str, attributes: dict[str, str], task_input: Any
    ) -> _TaskSpan:
        span = self._tracer.start_span(
            f"process {destination}",
            context=self._parent(task_input),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": source,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": destination,
                **attributes,
            },
        )
        return _TaskSpan(self._tracer, span)

    def _parent(self, task_input: Any) -> otel_context.Context:
        """The W3C trace context in the task input: a traceparent string at the key (with
        "tracestate" beside it), or an object holding both; else a new trace."""
        empty = otel_context.Context()
        if not isinstance(task_input, dict):
            return empty
        value = task_input.get(self._key)
        if isinstance(value, str):
            carrier = {"traceparent": value}
            if isinstance(state := task_input.get("tracestate"), str):
                carrier["tracestate"] = state
        elif isinstance(value, dict):
            carrier = {k: v for k, v in value.items() if isinstance(v, str)}
        else:
            return empty
        return _W3C.extract(carrier, context=empty)

    def carrier(self) -> dict[str, str] | None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier or None

    def untraced(self) -> contextlib.AbstractContextManager[None]:
        return suppress_instrumentation()

    def current(self) -> trace.Span | None:
        span = trace.get_current_span()
        return span if span.get_span_context().is_valid else None

    @contextlib.contextmanager
    def batch(
        self, name: str, members: Sequence[object | None], attributes: dict[str, str | int]
    ) -> Iterator[None]:
        # One call for several tasks belongs to no one task's trace: the messaging
        # conventions make a batch operation its own span, linked to the context of each
        # message it acts on (a parent can be only one of them). Each task's trace then
        # shows its delete as an event (``event``), and the batch span leads to the others.
        links = [
            trace.Link(member.get_span_context())
            for member in members
            if isinstance(member, trace.Span)
        ]
        span = self._tracer.start_span(
            name,
            context=otel_context.Context(),  # a root, whichever task's context runs this
            kind=SpanKind.INTERNAL,  # the SQS call under it is the CLIENT span
            links=links,
            attributes=attributes,
        )
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            yield

    def event(self, member: object | None, name: str, attributes: dict[str, str | bool]) -> None:
        if isinstance(member, trace.Span) and member.is_recording():
            member.add_event(name, attributes)
