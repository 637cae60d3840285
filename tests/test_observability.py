"""Observability: CloudWatch EMF records, dashboards, autoscaling on busy slots."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sfn_worker import App, TaskContext, TaskFailed
from sfn_worker.runtime.emf import EmfPublisher
from sfn_worker.runtime.http import serve_http
from sfn_worker.testing import FakeStepFunctions, Fault, run_app

from . import emf_schema
from .test_config_files import load_json
from .test_operations import free_port, get
from .test_process import BIN, REPO


async def _lines(stream: asyncio.StreamReader | None, into: list[str]) -> None:
    assert stream is not None
    async for line in stream:
        into.append(line.decode().rstrip("\n"))


async def test_emf_records_on_stdout_validate_and_logs_stay_on_stderr(
    fake: FakeStepFunctions,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    env.update(
        SFN_ACTIVITY_ARN=fake.activity_arn,
        SFN_HANDLER="sfn_worker.examples:seed_handler",
        SFN_METRICS="emf",
        SFN_METRICS_INTERVAL_SECONDS="1",
        SFN_METRICS_NAMESPACE="TestWorkers",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="2",
        PYTHONPATH=str(REPO),
    )
    tasks = [fake.add_task({"in": "SUCCESS"}), fake.add_task({"in": "SUCCESS"})]
    tasks.append(fake.add_task({"in": "NOPE"}))
    process = await asyncio.create_subprocess_exec(
        str(BIN / "sfn-worker"),
        "run",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout: list[str] = []
    stderr: list[str] = []
    readers = [
        asyncio.create_task(_lines(process.stdout, stdout)),
        asyncio.create_task(_lines(process.stderr, stderr)),
    ]
    try:
        await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=20)
        process.send_signal(signal.SIGTERM)
        fake.release_polls()
        assert await asyncio.wait_for(process.wait(), 20) == 0
        await asyncio.gather(*readers)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    records = [json.loads(line) for line in stdout]
    assert records, "no EMF record on stdout"
    for record in records:
        emf_schema.validate(record)
        assert record["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "TestWorkers"
    logs = [json.loads(line) for line in stderr]
    assert logs
    assert not any("_aws" in log for log in logs)  # metrics never land in the log stream

    per_activity = [
        r
        for r in records
        if (r.get("Source"), r.get("Kind")) == ("fake-activity", "activity") and "Error" not in r
    ]
    assert sum(r["TasksSucceeded"] for r in per_activity) == 2
    assert sum(r["TasksFailed"] for r in per_activity) == 1
    assert all(r["ServiceName"] == "sfn-activity-worker" for r in per_activity)
    assert {r["Concurrency"] for r in per_activity} == {16}
    assert all(0 <= r["SlotsBusy"] <= 100 for r in per_activity)
    by_error = [r for r in records if "Error" in r]
    assert [(r["Error"], r["TasksFailed"]) for r in by_error] == [("NO_SUCCESS_INPUT", 1)]
    assert any("EventLoopLag" in r and "Source" not in r for r in records)


def test_each_emf_count_reads_its_own_counter() -> None:
    """Every count of a source's record moves with the counter it reports, for both kinds
    (a count wired to a renamed or wrong metric would stay 0 or move with another)."""
    from types import SimpleNamespace

    from sfn_worker.metrics import Metrics
    from sfn_worker.runtime.emf import COUNTS

    metrics = Metrics()
    counters = {
        "TasksStarted": "tasks_started",
        "TasksSucceeded": "tasks_succeeded",
        "TasksGone": "tasks_gone",
        "TasksStalled": "tasks_stalled",
        "TasksReleased": "tasks_released",
        "HandlerProcessDeaths": "handler_process_deaths",
    }
    assert set(counters) == set(COUNTS)
    sources: list[Any] = []  # stand-ins for SourceWorker: what EMF reads of one
    for kind in ("activity", "queue"):
        bound = metrics.for_source("jobs", kind)  # one name, two kinds: two series
        for n, attribute in enumerate(counters.values(), start=1):
            getattr(bound, attribute).inc(n + (10 if kind == "queue" else 0))
        bound.task_failed("E")
        bound.poll_error("C")
        state = SimpleNamespace(running=1, concurrency=4, queued=2, handlers_stuck=0)
        sources.append(
            SimpleNamespace(
                name="jobs",
                source=SimpleNamespace(kind=kind),
                metrics=bound,
                state=lambda s=state: s,
            )
        )
    output = _Lines()
    publisher = EmfPublisher(
        metrics, lambda: sources, namespace="N", service_name="S", output=output
    )
    publisher.publish()
    records = [json.loads(line) for line in output.lines]
    for kind in ("activity", "queue"):
        (record,) = [r for r in records if r.get("Kind") == kind and "Error" not in r]
        assert record["Source"] == "jobs"
        for n, metric in enumerate(counters, start=1):
            assert record[metric] == n + (10 if kind == "queue" else 0), metric
        assert (record["TasksFailed"], record["PollErrors"], record["SlotsBusy"]) == (1, 1, 25)
    publisher.publish()  # the next interval: nothing new
    again = [json.loads(line) for line in output.lines[len(records) :]]
    assert all(r.get(m, 0) == 0 for r in again if "Source" in r for m in counters)


# -- dashboards and autoscaling ---------------------------------------------------------------

SERVICE_METRICS = {  # AWS/States, per ActivityArn: Step Functions' own, not the worker's
    "ActivitiesScheduled", "ActivitiesStarted", "ActivitiesSucceeded", "ActivitiesFailed",
    "ActivitiesTimedOut", "ActivitiesHeartbeatTimedOut", "ActivityScheduleTime",
    "ActivityRunTime", "ActivityTime",
}  # fmt: skip
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"instance", "job"}
WIDGET_TYPES = {"metric", "text", "alarm", "log"}
# The panels both dashboards have (by a word of their title), each over every source.
PANELS = (
    "Throughput", "Outcomes", "In flight", "Slots busy", "Heartbeat lag", "Event loop lag",
    "Poll errors",
)  # fmt: skip
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/notify-jobs"


@dataclass
class Emitted:
    """What a worker wrote: /metrics sample names with their label names; EMF metrics
    with their namespace and dimension names."""

    samples: dict[str, set[str]] = field(default_factory=dict)
    # (namespace, metric, dimension names) of each EMF metric
    emf: set[tuple[str, str, frozenset[str]]] = field(default_factory=set)
    sources: set[tuple[str, str]] = field(default_factory=set)  # (source, kind) label values
    emf_sources: set[tuple[str, str]] = field(default_factory=set)  # (Source, Kind) values


class _Lines:
    error: OSError | None = None

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, data: bytes, records: int = 1) -> bool:
        self.lines += data.decode().splitlines()
        return True


async def _emitted_by_a_worker(fake: FakeStepFunctions) -> Emitted:
    """Runs an app with an activity and a callback queue against the fake until it has
    done what every series needs (a success, a failure, a poll error, heartbeats, a
    callback task), then scrapes /metrics and has the EMF publisher write its records."""
    app = App()
    beaten = asyncio.Event()

    @app.activity("render", heartbeat_seconds=0.2)
    async def render(task_input: Any, ctx: TaskContext) -> Any:
        if task_input.get("fail"):
            raise TaskFailed("Render.Failed", "failed on purpose")
        await beaten.wait()  # heartbeated first: a heartbeat lag to report
        return {"ok": True}

    @app.callback_queue(QUEUE_URL)
    async def notify(task_input: Any, ctx: TaskContext) -> Any:
        return {"ok": True}

    port = free_port()
    fake.inject("GetActivityTask", Fault.server_error())  # a poll error, with its code
    async with (
        run_app(app, fake, http_port=port, http_host="127.0.0.1") as runtime,
        serve_http(runtime.settings, runtime),
    ):
        ok = fake.add_task({}, activity="render")
        failed = fake.add_task({"fail": True}, activity="render")
        _, message = fake.sqs.add_callback_task({}, queue=fake.sqs.queues[QUEUE_URL])
        await fake.wait_for(
            lambda: any(c.token == ok.token for c in fake.calls_of("SendTaskHeartbeat"))
        )
        beaten.set()
        await fake.wait_for(
            lambda: ok.state != "open" and failed.state != "open" and message.deleted
        )
        _, text = await get(f"http://127.0.0.1:{port}/metrics")
        output = _Lines()
        EmfPublisher(
            runtime.metrics,
            runtime.sources,
            namespace=runtime.settings.metrics_namespace,
            service_name=runtime.settings.metrics_service_name,
            output=output,
        ).publish()
    emitted = Emitted()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            emitted.samples.setdefault(sample.name, set()).update(sample.labels)
            if "source" in sample.labels:
                emitted.sources.add((sample.labels["source"], sample.labels["kind"]))
    for line in output.lines:
        record = json.loads(line)
        (directive,) = record["_aws"]["CloudWatchMetrics"]
        (dimensions,) = directive["Dimensions"]
        if "Source" in dimensions:
            emitted.emf_sources.add((record["Source"], record["Kind"]))
        for metric in directive["Metrics"]:
            emitted.emf.add((directive["Namespace"], metric["Name"], frozenset(dimensions)))
    return emitted


def _cloudwatch_queries(body: dict[str, Any]) -> list[tuple[str, str, frozenset[str], str]]:
    """(namespace, metric, dimension names, label) of each worker query (SEARCH)."""
    queries = []
    for widget in body["widgets"]:
        for line in widget["properties"].get("metrics", []):
            options = next((i for i in line if isinstance(i, dict)), {})
            if "expression" not in options:
                continue
            match = re.fullmatch(
                r"""SEARCH\('\{([^}]+)\} MetricName="(\w+)"', '\w+', \d+\)""",
                options["expression"],
            )
            assert match, options["expression"]
            namespace, *dimensions = match.group(1).split(",")
            queries.append((namespace, match.group(2), frozenset(dimensions), options["label"]))
    return queries


def _grafana_targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (target["expr"], target.get("legendFormat", ""))
        for panel in dashboard["panels"]
        if panel.get("type") != "row"
        for target in panel["targets"]
    ]


async def test_dashboards_and_the_scaling_policy_use_only_what_the_worker_emits(
    fake: FakeStepFunctions,
) -> None:
    emitted = await _emitted_by_a_worker(fake)
    per_source = {"ServiceName", "Source", "Kind"}
    # The worker's own view first: both kinds of source, under the same dimensions.
    sources = {(r, d) for _, r, d in emitted.emf if r == "TasksSucceeded"}
    assert sources == {("TasksSucceeded", frozenset(per_source))}
    assert {"source", "kind"} <= emitted.samples["sfn_worker_tasks_succeeded_total"]
    both = {("render", "activity"), ("notify-jobs", "queue")}
    assert emitted.sources == emitted.emf_sources == both

    # CloudWatch: every metric and dimension set a widget searches is one a record has;
    # each per-source widget searches by Source and Kind (every source shows), and its
    # labels name only dimensions of what it searches.
    cloudwatch = _cloudwatch_queries(load_json("cloudwatch-dashboard.json"))
    for namespace, metric, dimensions, label in cloudwatch:
        assert (namespace, metric, dimensions) in emitted.emf, (metric, sorted(dimensions))
        if metric != "EventLoopLag":
            assert {"Source", "Kind"} <= dimensions, metric
        assert set(re.findall(r"PROP\('Dim\.(\w+)'\)", label)) <= dimensions, label

    # Grafana: every series a query reads is one /metrics has, and every label a query
    # groups by or shows is one of those series' (or one Prometheus adds at scrape).
    for expr, legend in _grafana_targets(load_json("grafana-dashboard.json")):
        names = set(re.findall(r"\b(sfn_worker_[a-z_]+)", expr))
        assert names, expr
        assert names <= set(emitted.samples), names - set(emitted.samples)
        labels = set().union(*(emitted.samples[name] for name in names)) | TARGET_LABELS
        used = {
            label.strip()
            for group in re.findall(r"\bby \(([^)]*)\)", expr)
            for label in group.split(",")
        }
        used |= set(re.findall(r"\{\{(\w+)\}\}", legend))
        assert used <= labels, (expr, used - labels)
        if names != {"sfn_worker_event_loop_lag_seconds"}:
            for group in re.findall(r"\bby \(([^)]*)\)", expr):
                assert {"source", "kind"} <= {g.strip() for g in group.split(",")}, expr

    # The scaling policy tracks a metric the records carry, under their dimensions.
    scaling = load_json("ecs-service-autoscaling.json")
    spec = scaling["BusySlotsPolicy"]["TargetTrackingScalingPolicyConfiguration"][
        "CustomizedMetricSpecification"
    ]
    dimensions = frozenset(d["Name"] for d in spec["Dimensions"])
    assert (spec["Namespace"], spec["MetricName"], dimensions) in emitted.emf
    kinds = {d["Value"] for d in spec["Dimensions"] if d["Name"] == "Kind"}
    assert kinds <= {"activity", "queue"}


def _titles(titles: list[str]) -> dict[str, list[str]]:
    return {topic: [t for t in titles if topic.lower() in t.lower()] for topic in PANELS}


def test_both_dashboards_have_the_same_panels() -> None:
    body = load_json("cloudwatch-dashboard.json")
    cloudwatch = [
        w["properties"]["title"]
        for w in body["widgets"]
        if w["type"] == "metric"
        and not any(line and line[0] == "AWS/States" for line in w["properties"]["metrics"])
    ]
    grafana = [p["title"] for p in load_json("grafana-dashboard.json")["panels"]]
    assert len(cloudwatch) == len(grafana) == len(PANELS)
    for topic, found in _titles(cloudwatch).items():
        assert len(found) == 1, (topic, cloudwatch)
    for topic, found in _titles(grafana).items():
        assert len(found) == 1, (topic, grafana)
    # Queue depth (taken, not started) shows in both.
    assert any("QueueDepth" in json.dumps(w) for w in body["widgets"])
    assert "sfn_worker_queue_depth" in json.dumps(load_json("grafana-dashboard.json"))


def test_cloudwatch_dashboard_is_a_put_dashboard_body() -> None:
    body = load_json("cloudwatch-dashboard.json")
    assert set(body) <= {"widgets", "start", "end", "periodOverride"}
    for widget in body["widgets"]:
        assert widget["type"] in WIDGET_TYPES
        for key in ("x", "y", "width", "height"):
            assert isinstance(widget.get(key, 0), int)
        assert 1 <= widget["width"] <= 24
        assert widget.get("x", 0) + widget["width"] <= 24
        if widget["type"] == "metric":
            properties = widget["properties"]
            assert properties["view"] in ("timeSeries", "singleValue", "bar", "pie", "gauge")
            assert isinstance(properties["region"], str)
            assert properties["metrics"]
            for line in properties["metrics"]:
                items = [i for i in line if not isinstance(i, dict)]
                if items and items[0] != "...":  # a metric by its name: Step Functions'
                    assert (items[0], items[1] in SERVICE_METRICS) == ("AWS/States", True)
    assert load_json("grafana-dashboard.json")["schemaVersion"] >= 36


def test_autoscaling_tracks_busy_slots_next_to_the_backlog() -> None:
    scaling = load_json("ecs-service-autoscaling.json")
    policy = scaling["BusySlotsPolicy"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    spec = policy["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert (spec["Namespace"], spec["MetricName"]) == ("SfnActivityWorker", "SlotsBusy")
    assert {d["Name"] for d in spec["Dimensions"]} == {"ServiceName", "Source", "Kind"}
    assert spec["Unit"] == "Percent"
    assert 0 < policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] < 100
