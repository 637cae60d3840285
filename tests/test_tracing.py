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
from sfn_worker.testing import FakeStepFunctions, Fault

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

    assert attributes["sfn_worker.source.name"] == "fake-activity"
    assert attributes["sfn_worker.source.kind"] == "activity"
    assert "sfn_worker.activity.name" not in attributes

    bad = next(s for s in tasks if s is not task)
    assert bad.parent is None  # no trace context in its input: a new trace
    assert bad.status.status_code is StatusCode.ERROR
    assert (bad.attributes or {})["error.type"] == "Render.Failed"
    # The exception event, by type only: a message may quote the payload.
    (event,) = [e for e in bad.events if e.name == "exception"]
    assert dict(event.attributes or {}) == {"exception.type": "Render.Failed"}
    assert not [e for e in task.events if e.name == "exception"]
    # Never a token or a payload in the worker's spans (the handler's own spans record
    # what their author chose: "user work" records its exception, message included).
    for span in finished:
        if (
            span.instrumentation_scope
            and span.instrumentation_scope.name == traced_handlers.tracer_name
        ):
            continue
        values = [*(span.attributes or {}).values()]
        values += [v for e in span.events for v in (e.attributes or {}).values()]
        for value in values:
            assert ok.token[:40] not in str(value)
            assert "the user's failure" not in str(value)


def _rpc(span: ReadableSpan) -> object:
    return (span.attributes or {}).get("rpc.method")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_each_heartbeat_span_belongs_to_its_own_task(
    fake: FakeStepFunctions, spans: InMemorySpanExporter, mode: str
) -> None:
    tasks = [fake.add_task({"n": n}) for n in range(2)]
    tokens = {task.token for task in tasks}

    def both_heartbeated() -> bool:
        return {c.token for c in fake.calls_of("SendTaskHeartbeat") if c.answer == "ok"} >= tokens

    async with running_worker(
        fake,
        traced_handlers.waits_for_shutdown,
        handler_mode=mode,
        heartbeat_seconds=0.2,
        shutdown_grace_seconds=30,  # handler processes may still be starting: let them
    ) as harness:
        await fake.wait_for(both_heartbeated, timeout=60)
        await harness.stop()
    assert {task.state for task in tasks} == {"succeeded"}
    finished = spans.get_finished_spans()
    task_spans = {s.context.span_id: s for s in _by_name(finished, "process fake-activity")}
    assert len(task_spans) == 2
    beats = [s for s in finished if _rpc(s) == "SendTaskHeartbeat"]
    assert beats
    for beat in beats:
        assert beat.parent is not None
        parent = task_spans[beat.parent.span_id]  # a task's span, in the task's trace
        assert beat.context.trace_id == parent.context.trace_id
    # Every task's own beats sit under it (not all under the task that came first).
    assert {beat.parent.span_id for beat in beats if beat.parent} == set(task_spans)


async def test_a_callback_queue_traces_its_tasks_and_each_delete_but_not_its_long_polls(
    fake: FakeStepFunctions, spans: InMemorySpanExporter
) -> None:
    queue = fake.sqs.add_queue("render-jobs")
    pairs = [fake.sqs.add_callback_task({"n": n}, queue=queue) for n in range(3)]
    all_started = asyncio.Event()
    started = 0

    async def handler(task_input: Any, ctx: Any) -> Any:
        nonlocal started
        started += 1
        if started == len(pairs):
            all_started.set()
        await all_started.wait()  # all answer at once: their deletes share a batch
        return {"ok": True}

    async with running_worker(fake, handler, activity_arn=None, sqs_queue_url=queue.url):
        await fake.wait_for(lambda: all(message.deleted for _, message in pairs))
    finished = spans.get_finished_spans()
    assert not [s for s in finished if _rpc(s) == "ReceiveMessage"]  # long polls: untraced
    task_spans = _by_name(finished, "process render-jobs")
    assert len(task_spans) == 3
    for span in task_spans:
        attributes = dict(span.attributes or {})
        assert attributes["messaging.system"] == "aws_sqs"
        assert attributes["sfn_worker.source.name"] == "render-jobs"
        assert attributes["sfn_worker.source.kind"] == "queue"
        # Each task's trace shows its own delete.
        (event,) = [e for e in span.events if e.name == "sfn_worker.sqs.delete"]
        assert dict(event.attributes or {}) == {
            "messaging.message.id": attributes["messaging.message.id"],
            "sfn_worker.sqs.deleted": True,
        }
    deletes = _by_name(finished, "delete render-jobs")
    assert deletes
    linked = [link.context.span_id for d in deletes for link in d.links]
    assert sorted(linked) == sorted(s.context.span_id for s in task_spans)
    task_traces = {s.context.trace_id for s in task_spans}
    by_id = {s.context.span_id: s for s in finished}
    for delete in deletes:
        assert delete.parent is None  # a root: no one task's trace holds the batch
        assert delete.context.trace_id not in task_traces
        attributes = dict(delete.attributes or {})
        assert attributes["messaging.operation.type"] == "settle"
        assert attributes["messaging.batch.message_count"] == len(delete.links)
    calls = [s for s in finished if _rpc(s) == "DeleteMessageBatch"]
    assert calls
    for call in calls:  # the SQS call sits under its batch span, in no task's trace
        assert call.parent is not None
        assert by_id[call.parent.span_id].name == "delete render-jobs"


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
@pytest.mark.parametrize(
    ("naming", "service_name"),
    [
        ({"OTEL_SERVICE_NAME": "render-workers"}, "render-workers"),
        ({"SFN_METRICS_SERVICE_NAME": "render-fleet"}, "render-fleet"),  # not unknown_service
    ],
)
async def test_otlp_export_from_the_worker_and_its_handler_process(
    fake: FakeStepFunctions,
    receiver: OtlpReceiver,
    naming: dict[str, str],
    service_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    task = fake.add_task({"in": "x", "traceparent": TRACEPARENT})
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.traced_handlers:traced",
        SFN_HANDLER_MODE="process",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="2",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="100",
        **naming,
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
    assert resource["service.name"] == child_resource["service.name"] == service_name
    assert task_span.trace_id.hex() == TRACE_ID
    assert task_span.parent_span_id.hex() == PARENT_ID
    assert handler_span.parent_span_id == task_span.span_id
    # Exported by the handler process, a child of the worker's handler span.
    assert user_span.parent_span_id == handler_span.span_id
    assert user_span.trace_id == task_span.trace_id


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({}, "render-fleet"),
        ({"OTEL_SERVICE_NAME": "mine"}, "mine"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "team=a, service.name=mine"}, None),
        ({"OTEL_RESOURCE_ATTRIBUTES": "team=a", "OTEL_SERVICE_NAME": " "}, "render-fleet"),
    ],
)
def test_the_service_is_named_after_the_worker_unless_the_user_named_it(
    environ: dict[str, str], named: str | None
) -> None:
    from sfn_worker.otel import default_service_name

    before = dict(environ)
    default_service_name("render-fleet", environ)
    assert environ.get("OTEL_SERVICE_NAME") == (named or before.get("OTEL_SERVICE_NAME"))
    assert environ.get("OTEL_RESOURCE_ATTRIBUTES") == before.get("OTEL_RESOURCE_ATTRIBUTES")


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


async def test_a_delete_sqs_refuses_shows_as_not_deleted_in_the_task_trace(
    fake: FakeStepFunctions, spans: InMemorySpanExporter
) -> None:
    queue = fake.sqs.add_queue("render-jobs")
    task, message = fake.sqs.add_callback_task({}, queue=queue)
    fake.inject("DeleteMessageBatch", Fault.error("AccessDenied", 403))

    async def handler(task_input: Any, ctx: Any) -> Any:
        return {"ok": True}

    async with running_worker(fake, handler, activity_arn=None, sqs_queue_url=queue.url):
        await fake.wait_for(lambda: bool(fake.calls_of("DeleteMessageBatch")))
    # The worker stopped: the task (and its span) ended, its message is still there.
    assert task.state == "succeeded"
    assert not message.deleted
    (span,) = _by_name(spans.get_finished_spans(), "process render-jobs")
    (event,) = [e for e in span.events if e.name == "sfn_worker.sqs.delete"]
    assert (event.attributes or {})["sfn_worker.sqs.deleted"] is False
    (delete,) = _by_name(spans.get_finished_spans(), "delete render-jobs")
    assert [link.context.span_id for link in delete.links] == [span.context.span_id]
