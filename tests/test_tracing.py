"""OpenTelemetry tracing: a span per task continuing the trace in the task input, a handler
span, the API calls; into the handler in every mode; the OTLP/HTTP exporter for real."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.instrumentation.botocore import AiobotocoreInstrumentor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sfn_worker.otel_config import check_otel_environment
from sfn_worker.settings import SettingsError
from sfn_worker.testing import FakeStepFunctions

from . import traced_handlers
from .conftest import running_worker
from .test_process import BIN, REPO, worker_process

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module")
def provider() -> Iterator[TracerProvider]:
    """One SDK provider for this module (OpenTelemetry's global can be set only once)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(provider)
    yield provider
    instrumentor = AiobotocoreInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


@pytest.fixture
def spans(
    provider: TracerProvider, monkeypatch: pytest.MonkeyPatch
) -> Iterator[InMemorySpanExporter]:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # asks for traces; provider is set
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def _by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


@pytest.mark.parametrize(
    ("mode", "handler"),
    [("async", traced_handlers.traced_async), ("thread", traced_handlers.traced)],
)
async def test_a_task_continues_the_trace_of_its_input(
    fake: FakeStepFunctions, spans: InMemorySpanExporter, mode: str, handler: Any
) -> None:
    ok = fake.add_task({"in": "x", "traceparent": TRACEPARENT})
    failed = fake.add_task({"fail": True})
    async with running_worker(fake, handler, handler_mode=mode):
        await fake.wait_for(lambda: ok.state != "open" and failed.state != "open")
    finished = spans.get_finished_spans()
    tasks = _by_name(finished, "process fake-activity")
    assert len(tasks) == 2
    task = next(
        s for s in tasks if s.attributes and s.attributes["sfn_worker.outcome"] == "succeeded"
    )
    assert task.kind is SpanKind.CONSUMER
    assert task.parent is not None
    assert (format(task.context.trace_id, "032x"), format(task.parent.span_id, "016x")) == (
        TRACE_ID,
        PARENT_ID,
    )
    attributes = dict(task.attributes or {})
    assert attributes["messaging.system"] == "aws.stepfunctions"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == "fake-activity"
    assert attributes["aws.step_functions.activity.arn"] == fake.activity_arn
    assert attributes["sfn_worker.worker.name"] == "test-worker"
    assert attributes["sfn_worker.handler.mode"] == mode
    assert len(str(attributes["sfn_worker.task.token_hash"])) == 12

    def children_of(parent: ReadableSpan) -> list[ReadableSpan]:
        return [s for s in finished if s.parent and s.parent.span_id == parent.context.span_id]

    handler_span = next(s for s in children_of(task) if s.name == "handler fake-activity")
    assert [s.name for s in children_of(handler_span)] == ["user work"]
    calls = [s for s in children_of(task) if s.kind is SpanKind.CLIENT]
    assert [s.attributes and s.attributes.get("rpc.method") for s in calls] == ["SendTaskSuccess"]
    assert not [s for s in finished if "GetActivityTask" in s.name]  # polls are not traced

    bad = next(s for s in tasks if s is not task)
    assert bad.parent is None  # no trace context in its input: a new trace
    assert bad.status.status_code is StatusCode.ERROR
    assert (bad.attributes or {})["error.type"] == "Render.Failed"
    for span in finished:  # never a token or a payload
        for value in (span.attributes or {}).values():
            assert ok.token[:40] not in str(value)
            assert "the user's failure" not in str(value)


# -- a real OTLP/HTTP exporter, and process mode ------------------------------------------


class OtlpReceiver:
    """Takes OTLP/HTTP protobuf exports, as a collector would."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []  # (resource attributes, span)
        self.changed = asyncio.Condition()
        self.url = ""

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((resource, span) for span in scope_spans.spans)
        async with self.changed:
            self.changed.notify_all()
        return web.Response(content_type="application/x-protobuf", body=b"")

    async def wait_for(self, names: set[str], timeout: float = 30) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: names <= {s.name for _, s in self.spans})


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    received = OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", received._traces)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    received.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield received
    await runner.cleanup()


@pytest.mark.timeout(90)
async def test_otlp_export_from_the_worker_and_its_handler_process(
    fake: FakeStepFunctions, receiver: OtlpReceiver
) -> None:
    task = fake.add_task({"in": "x", "traceparent": TRACEPARENT})
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.traced_handlers:traced",
        SFN_HANDLER_MODE="process",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="2",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_SERVICE_NAME="render-workers",
        OTEL_BSP_SCHEDULE_DELAY="100",
    ) as worker:
        await fake.wait_for(lambda: task.state != "open", timeout=30)
        await receiver.wait_for({"process fake-activity", "handler fake-activity", "user work"})
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    spans = {span.name: (resource, span) for resource, span in receiver.spans}
    (resource, task_span), (_, handler_span) = (
        spans["process fake-activity"],
        spans["handler fake-activity"],
    )
    child_resource, user_span = spans["user work"]
    assert resource["service.name"] == child_resource["service.name"] == "render-workers"
    assert task_span.trace_id.hex() == TRACE_ID
    assert task_span.parent_span_id.hex() == PARENT_ID
    assert handler_span.parent_span_id == task_span.span_id
    # Exported by the handler process, a child of the worker's handler span.
    assert user_span.parent_span_id == handler_span.span_id
    assert user_span.trace_id == task_span.trace_id


def test_without_otel_in_the_environment_nothing_of_it_is_imported() -> None:
    script = (
        "import sys, sfn_worker.cli, sfn_worker.runtime.runtime\n"
        "from sfn_worker.tracing import NO_TRACING, setup_tracing\n"
        "assert setup_tracing('traceparent', {}) is NO_TRACING\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)


def test_otel_asked_for_but_not_installed_is_a_warning_not_a_failure() -> None:
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from sfn_worker.tracing import NO_TRACING, setup_tracing\n"
        "assert setup_tracing('traceparent', {'OTEL_TRACES_EXPORTER': 'otlp'}) is NO_TRACING\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert "the otel extra is not installed" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
        {"OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_TRACES_EXPORTER": "otlp_proto_http,console", "OTEL_METRICS_EXPORTER": "none"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},  # tracing not asked for: nothing to check
        {"OTEL_TRACES_EXPORTER": "zipkin", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_otel_configurations_the_worker_can_run(environ: dict[str, str]) -> None:
    check_otel_environment(environ, emf=False)


@pytest.mark.parametrize(
    ("environ", "emf", "variable"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            False,
            "OTEL_EXPORTER_OTLP_PROTOCOL=",
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp_proto_grpc"}, False, "OTEL_TRACES_EXPORTER="),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "prometheus"},
            False,
            "OTEL_METRICS_EXPORTER=",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "console"},
            True,
            "OTEL_LOGS_EXPORTER=console",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_PYTHON_ID_GENERATOR": "xray"},
            False,
            "OTEL_PYTHON_ID_GENERATOR=",
        ),
    ],
)
def test_otel_configurations_the_sdk_cannot_run_name_their_variable(
    environ: dict[str, str], emf: bool, variable: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        check_otel_environment(environ, emf=emf)
