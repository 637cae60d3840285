"""Observability: CloudWatch EMF records, dashboards, autoscaling on busy slots."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from typing import Any

from sfn_worker.metrics import Metrics
from sfn_worker.testing import FakeStepFunctions

from . import emf_schema
from .test_config_files import load_json
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


# -- dashboards and autoscaling ---------------------------------------------------------------

EMF_METRICS = {
    "TasksStarted", "TasksSucceeded", "TasksFailed", "TasksGone", "TasksStalled",
    "PollErrors", "TasksInFlight", "Concurrency", "QueueDepth", "HandlersStuck", "SlotsBusy",
    "HeartbeatLagP99", "EventLoopLag",
}  # fmt: skip
SERVICE_METRICS = {  # AWS/States, per ActivityArn
    "ActivitiesScheduled", "ActivitiesStarted", "ActivitiesSucceeded", "ActivitiesFailed",
    "ActivitiesTimedOut", "ActivitiesHeartbeatTimedOut", "ActivityScheduleTime",
    "ActivityRunTime", "ActivityTime",
}  # fmt: skip
WIDGET_TYPES = {"metric", "text", "alarm", "log"}


def _cloudwatch_metric_names(widget: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for line in widget["properties"].get("metrics", []):
        items = [i for i in line if not isinstance(i, dict)]
        options = next((i for i in line if isinstance(i, dict)), {})
        if "expression" in options:
            names |= set(re.findall(r'MetricName="([A-Za-z0-9]+)"', options["expression"]))
        elif items and items[0] != "...":
            namespace, metric = items[0], items[1]
            assert namespace in ("SfnActivityWorker", "AWS/States"), namespace
            names.add(metric)
    return names


def test_cloudwatch_dashboard_is_a_put_dashboard_body_over_real_metrics() -> None:
    body = load_json("cloudwatch-dashboard.json")
    assert set(body) <= {"widgets", "start", "end", "periodOverride"}
    titles = []
    used: set[str] = set()
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
            titles.append(properties["title"])
            used |= _cloudwatch_metric_names(widget)
    assert used <= EMF_METRICS | SERVICE_METRICS, used - EMF_METRICS - SERVICE_METRICS
    assert {"TasksSucceeded", "TasksFailed", "TasksInFlight", "Concurrency", "SlotsBusy"} <= used
    assert {"HeartbeatLagP99", "EventLoopLag", "ActivitiesScheduled"} <= used
    for topic in ("Throughput", "Outcomes", "In flight", "Heartbeat lag", "Event loop lag"):
        assert any(topic.lower() in t.lower() for t in titles), topic


def _exported_metric_names() -> set[str]:
    metrics = Metrics()
    activity = metrics.for_source("a", "activity")
    activity.task_failed("E")
    activity.poll_error("C")
    activity.heartbeat_failed("C")
    activity.observe_heartbeat_lag(0.1)
    activity.handler_duration.observe(0.1)
    text = metrics.render().decode()
    return set(re.findall(r"^(sfn_worker_[a-z_]+)", text, flags=re.MULTILINE))


def test_grafana_dashboard_queries_only_metrics_the_worker_exports() -> None:
    dashboard = load_json("grafana-dashboard.json")
    assert dashboard["schemaVersion"] >= 36
    exported = _exported_metric_names()
    titles = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            continue
        titles.append(panel["title"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\b(sfn_worker_[a-z_]+)", target["expr"]))
            assert names, target["expr"]
            assert names <= exported, names - exported
    for topic in ("Throughput", "Outcomes", "In flight", "Heartbeat lag", "Event loop lag"):
        assert any(topic.lower() in t.lower() for t in titles), topic


def test_autoscaling_tracks_busy_slots_next_to_the_backlog() -> None:
    scaling = load_json("ecs-service-autoscaling.json")
    policy = scaling["BusySlotsPolicy"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    spec = policy["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert (spec["Namespace"], spec["MetricName"]) == ("SfnActivityWorker", "SlotsBusy")
    assert {d["Name"] for d in spec["Dimensions"]} == {"ServiceName", "Source", "Kind"}
    assert spec["Unit"] == "Percent"
    assert 0 < policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] < 100
