"""The worker against LocalStack's Step Functions: a real implementation none of us wrote."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from sfn_worker import SHUTDOWN_ERROR, App, TaskContext, TaskFailed
from sfn_worker.app import Handler
from sfn_worker.examples import seed_handler
from sfn_worker.runtime.runtime import Runtime
from sfn_worker.settings import Settings
from sfn_worker.worker import Worker

from ..bounds import BUSY_MACHINE_SLACK
from ..conftest import sample
from .conftest import Flow

WORKER_BIN = Path(sys.executable).parent / "sfn-worker"


@contextmanager
def worker_process(
    flow: Flow, aws: dict[str, str], **settings: str
) -> Iterator[subprocess.Popen[str]]:
    """``sfn-worker run`` as a real subprocess; killed if a test leaves it running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    env.update(aws)
    env.update(SFN_ACTIVITY_ARN=flow.activity_arn, SFN_WORKER_NAME="integration")
    env.update({"SFN_HANDLER": "sfn_worker.examples:seed_handler", **settings})
    process = subprocess.Popen(
        [str(WORKER_BIN), "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def stop(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


@asynccontextmanager
async def in_process_worker(
    flow: Flow, handler: Handler, **overrides: Any
) -> AsyncIterator[Worker]:
    values: dict[str, Any] = {
        "activity_arn": flow.activity_arn,
        "worker_name": "integration",
        "pollers": 1,
        "concurrency": 2,
        "heartbeat_seconds": 0,
        "shutdown_grace_seconds": 2,
    }
    values.update(overrides)
    worker = Worker(Settings(**values), handler)
    stop_event = asyncio.Event()
    running = asyncio.create_task(worker.run(stop_event))
    try:
        yield worker
    finally:
        stop_event.set()
        await asyncio.wait_for(running, 30)


def test_seed_flow_both_branches(make_flow: Any, aws_for_localstack: dict[str, str]) -> None:
    flow: Flow = make_flow()
    with worker_process(flow, aws_for_localstack, SFN_SHUTDOWN_GRACE_SECONDS="3") as worker:
        succeeded = flow.wait(flow.start({"in": "SUCCESS"}))
        failed = flow.wait(flow.start({"in": "RANDOM"}))
        code, log = stop(worker)
    assert succeeded["status"] == "SUCCEEDED"
    assert succeeded["output"].replace(" ", "") == '{"result":{"in":"SUCCESS"}}'
    assert failed["status"] == "FAILED"
    assert (failed["error"], failed["cause"]) == ("NO_SUCCESS_INPUT", 'Input is not "SUCCESS"')
    assert code == 0, log
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert events.count("task ended") == 2, log


async def test_retry_in_the_state_machine_redrives_each_attempt(make_flow: Any) -> None:
    flow: Flow = make_flow(
        Retry=[
            {
                "ErrorEquals": ["NO_SUCCESS_INPUT"],
                "IntervalSeconds": 1,
                "MaxAttempts": 2,
                "BackoffRate": 1.0,
            }
        ]
    )
    attempts: list[Any] = []

    def flaky(task_input: Any, ctx: TaskContext) -> Any:
        attempts.append(task_input)
        if len(attempts) < 3:
            raise TaskFailed("NO_SUCCESS_INPUT", f"attempt {len(attempts)}")
        return {"attempts": len(attempts)}

    async with in_process_worker(flow, flaky):
        result = await flow.wait_async(flow.start({"in": "RETRY"}))
    assert result["status"] == "SUCCEEDED"
    assert attempts == [{"in": "RETRY"}] * 3
    assert flow.history_types(result["executionArn"]).count("ActivityFailed") == 2


async def test_heartbeats_keep_a_long_task_alive_only_when_on(make_flow: Any) -> None:
    async def three_heartbeat_windows(task_input: Any, ctx: TaskContext) -> Any:
        await asyncio.sleep(6)  # 3 x HeartbeatSeconds
        return {"ok": True}

    quiet: Flow = make_flow(HeartbeatSeconds=2, TimeoutSeconds=60)
    beating: Flow = make_flow(HeartbeatSeconds=2, TimeoutSeconds=60)
    async with (
        in_process_worker(quiet, three_heartbeat_windows, heartbeat_seconds=0),
        in_process_worker(beating, three_heartbeat_windows, heartbeat_seconds=0.5),
    ):
        quiet_run, beating_run = quiet.start({}), beating.start({})
        quiet_result, beating_result = await asyncio.gather(
            quiet.wait_async(quiet_run), beating.wait_async(beating_run)
        )
    assert (quiet_result["status"], quiet_result.get("error")) == ("FAILED", "States.Timeout")
    assert beating_result["status"] == "SUCCEEDED"


async def test_timed_out_task_is_cancelled_and_the_worker_keeps_serving(make_flow: Any) -> None:
    flow: Flow = make_flow(HeartbeatSeconds=2, TimeoutSeconds=3)
    cancelled = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        if task_input.get("quick"):
            return {"served": True}
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"late": True}

    async with in_process_worker(flow, handler, heartbeat_seconds=0.5) as worker:
        timed_out = await flow.wait_async(flow.start({"quick": False}))
        await asyncio.wait_for(cancelled.wait(), 10)
        following = await flow.wait_async(flow.start({"quick": True}))
    assert (timed_out["status"], timed_out.get("error")) == ("FAILED", "States.Timeout")
    assert following["status"] == "SUCCEEDED"
    # The heartbeat learned the task was gone: no terminal call was made for it.
    assert sample(worker, "sfn_worker_tasks_gone_total") == 1
    assert sample(worker, "sfn_worker_tasks_succeeded_total") == 1


async def test_answer_after_timeout_is_logged_and_the_worker_keeps_serving(
    make_flow: Any,
) -> None:
    flow: Flow = make_flow(TimeoutSeconds=1)
    finish = asyncio.Event()

    async def handler(task_input: Any, ctx: TaskContext) -> Any:
        if not task_input.get("quick"):
            await finish.wait()
        return {"done": True}

    async with in_process_worker(flow, handler) as worker:
        timed_out = await flow.wait_async(flow.start({"quick": False}))
        finish.set()  # answers a task Step Functions already timed out
        following = await flow.wait_async(flow.start({"quick": True}))
    assert (timed_out["status"], timed_out.get("error")) == ("FAILED", "States.Timeout")
    assert following["status"] == "SUCCEEDED"
    assert sample(worker, "sfn_worker_tasks_gone_total") == 1


def test_sigterm_fails_a_long_task_with_worker_shutdown(
    make_flow: Any, aws_for_localstack: dict[str, str]
) -> None:
    flow: Flow = make_flow()
    grace = 4.0
    with worker_process(
        flow,
        aws_for_localstack,
        SFN_HANDLER="sfn_worker.examples:sleep_handler",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS=str(grace),
    ) as worker:
        execution = flow.start({"seconds": 300})
        deadline = time.monotonic() + 30
        while "ActivityStarted" not in flow.history_types(execution):
            assert time.monotonic() < deadline, "the worker never started the task"
            time.sleep(0.1)
        signalled = time.monotonic()
        code, log = stop(worker)
        took = time.monotonic() - signalled
        result = flow.wait(execution)
    assert code == 0, log
    assert took < grace + BUSY_MACHINE_SLACK
    assert (result["status"], result.get("error")) == ("FAILED", SHUTDOWN_ERROR)
    assert "interrupted" in result.get("cause", "")


def _check(flow_arn: str, aws: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    env.update(aws, SFN_ACTIVITY_ARN=flow_arn, SFN_HANDLER="sfn_worker.examples:seed_handler")
    return subprocess.run(
        [str(WORKER_BIN), "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_check_command(make_flow: Any, aws_for_localstack: dict[str, str]) -> None:
    flow: Flow = make_flow()
    ok = _check(flow.activity_arn, aws_for_localstack)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    missing = _check(flow.activity_arn + "-missing", aws_for_localstack)
    assert missing.returncode == 1
    assert "ActivityDoesNotExist" in missing.stderr
    assert "Traceback" not in missing.stderr


async def test_an_app_serves_two_activities_registered_by_name(make_flow: Any) -> None:
    """Names become ARNs through LocalStack's STS; one lifespan, two state machines."""
    suffix = uuid.uuid4().hex[:8]
    render_flow: Flow = make_flow(activity_name=f"render-{suffix}")
    notify_flow: Flow = make_flow(activity_name=f"notify-{suffix}")
    app = App()

    @app.lifespan
    async def resources(app: App) -> AsyncIterator[dict[str, str]]:
        yield {"tag": "from the lifespan"}

    @app.activity(f"render-{suffix}", concurrency=2)
    async def render(task_input: Any, ctx: TaskContext) -> Any:
        return {"rendered": task_input["name"], "tag": ctx.state["tag"]}

    @app.activity(f"notify-{suffix}", handler_mode="thread")
    def notify(task_input: Any, ctx: TaskContext) -> Any:
        return seed_handler(task_input, ctx)

    settings = Settings(worker_name="integration", shutdown_grace_seconds=2, heartbeat_seconds=0)
    runtime = Runtime(app, settings, environ={})
    stop = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop))
    try:
        rendered, notified = await asyncio.gather(
            render_flow.wait_async(render_flow.start({"name": "clip"})),
            notify_flow.wait_async(notify_flow.start({"in": "SUCCESS"})),
        )
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    assert rendered["status"] == "SUCCEEDED"
    assert json.loads(rendered["output"]) == {"rendered": "clip", "tag": "from the lifespan"}
    assert notified["status"] == "SUCCEEDED"
    assert json.loads(notified["output"]) == {"result": {"in": "SUCCESS"}}


# -- callback tasks over SQS ------------------------------------------------------------------


@contextmanager
def queue_worker_process(
    flow: Flow, aws: dict[str, str], **settings: str
) -> Iterator[subprocess.Popen[str]]:
    """``sfn-worker run`` for the flow's callback queue (SFN_SQS_QUEUE_URL, no activity)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    env.update(aws)
    env.update(SFN_SQS_QUEUE_URL=flow.queue_url, SFN_WORKER_NAME="integration")
    env.update({"SFN_HANDLER": "sfn_worker.examples:seed_handler", **settings})
    process = subprocess.Popen(
        [str(WORKER_BIN), "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_seed_flow_over_sqs_both_branches(
    make_callback_flow: Any, aws_for_localstack: dict[str, str]
) -> None:
    flow: Flow = make_callback_flow()
    with queue_worker_process(flow, aws_for_localstack, SFN_SHUTDOWN_GRACE_SECONDS="3") as worker:
        succeeded = flow.wait(flow.start({"in": "SUCCESS"}))
        failed = flow.wait(flow.start({"in": "RANDOM"}))
        code, log = stop(worker)
    assert succeeded["status"] == "SUCCEEDED"
    assert json.loads(succeeded["output"]) == {"result": {"in": "SUCCESS"}}
    assert failed["status"] == "FAILED"
    assert (failed["error"], failed["cause"]) == ("NO_SUCCESS_INPUT", 'Input is not "SUCCESS"')
    assert code == 0, log
    sqs = boto3_sqs(aws_for_localstack)
    attributes = sqs.get_queue_attributes(
        QueueUrl=flow.queue_url, AttributeNames=["ApproximateNumberOfMessages",
                                                 "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]  # fmt: skip
    assert attributes == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }  # every message deleted once its task was answered


def boto3_sqs(aws: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=aws["AWS_ENDPOINT_URL_SQS"],
        region_name=aws["AWS_REGION"],
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


async def test_a_long_callback_task_stays_invisible_past_the_visibility_timeout(
    make_callback_flow: Any, aws_for_localstack: dict[str, str]
) -> None:
    flow: Flow = make_callback_flow(VisibilityTimeout="3")
    runs = 0

    async def long_job(task_input: Any, ctx: TaskContext) -> Any:
        nonlocal runs
        runs += 1
        await asyncio.sleep(8)  # more than twice the visibility timeout
        return {"runs": runs}

    app = App()
    app.callback_queue(flow.queue_url, visibility_seconds=3)(long_job)
    settings = Settings(worker_name="integration", shutdown_grace_seconds=2, heartbeat_seconds=0)
    runtime = Runtime(app, settings, environ={})
    stop_event = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop_event))
    sqs = boto3_sqs(aws_for_localstack)
    try:
        execution = flow.start({"job": "long"})
        deadline = time.monotonic() + 30
        while runs == 0:  # LocalStack sends the message: an external service, polled
            assert time.monotonic() < deadline, "the task never started"
            await asyncio.sleep(0.1)
        # Another consumer, after the queue's own visibility timeout: nothing to see.
        await asyncio.sleep(4)
        stolen = await asyncio.to_thread(
            sqs.receive_message, QueueUrl=flow.queue_url, WaitTimeSeconds=2
        )
        result = await flow.wait_async(execution)
    finally:
        stop_event.set()
        await asyncio.wait_for(running, 30)
    assert stolen.get("Messages", []) == []
    assert result["status"] == "SUCCEEDED"
    assert json.loads(result["output"]) == {"runs": 1}


def test_sigterm_releases_a_running_callback_task_and_another_worker_finishes_it(
    make_callback_flow: Any, aws_for_localstack: dict[str, str]
) -> None:
    flow: Flow = make_callback_flow()
    settings = {
        "SFN_HANDLER": "sfn_worker.examples:sleep_handler",
        "SFN_HEARTBEAT_SECONDS": "0",
        "SFN_SHUTDOWN_GRACE_SECONDS": "2",
    }
    with queue_worker_process(flow, aws_for_localstack, **settings) as first:
        execution = flow.start({"seconds": 6})
        deadline = time.monotonic() + 30
        while "task started" not in _read_some(first):
            assert time.monotonic() < deadline, "the first worker never started the task"
        code, first_log = stop(first)
    assert code == 0, first_log
    assert '"outcome":"released"' in first_log
    with queue_worker_process(flow, aws_for_localstack, **settings) as second:
        result = flow.wait(execution, timeout=60)
        code, second_log = stop(second)
    assert result["status"] == "SUCCEEDED", second_log
    assert json.loads(result["output"])["slept"] == 6


def _read_some(process: subprocess.Popen[str]) -> str:
    """A line of the worker's log (blocking until one comes)."""
    assert process.stderr is not None
    return process.stderr.readline()


@pytest.mark.timeout(240)
def test_a_callback_task_survives_three_rolling_stops_under_a_redrive_policy(
    make_callback_flow: Any, aws_for_localstack: dict[str, str]
) -> None:
    """maxReceiveCount 4: three workers stopped in turn while running the task, the fourth
    finishes it. Each stop may add no receive of its own, or the fifth receive moves the
    live task to the dead-letter queue and the execution waits for its timeout."""
    sqs = boto3_sqs(aws_for_localstack)
    dead_letters = sqs.create_queue(QueueName=f"dead-letters-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    dead_letter_arn = sqs.get_queue_attributes(QueueUrl=dead_letters, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": 4})
    # LocalStack times a Task state without TimeoutSeconds out after 60 s (AWS: never).
    flow: Flow = make_callback_flow(state={"TimeoutSeconds": 600}, RedrivePolicy=policy)
    settings = {
        "SFN_HANDLER": "sfn_worker.examples:sleep_handler",
        # Each worker heartbeats while it holds the task: the state's HeartbeatSeconds (60)
        # must not run out over a hand-over (up to 21 s while the stopped worker's receives
        # are still open at SQS).
        "SFN_HEARTBEAT_SECONDS": "1",
        "SFN_SHUTDOWN_GRACE_SECONDS": "2",
        "SFN_POLLERS": "3",  # receives open at each stop: the ones that used to take it back
    }
    execution = flow.start({"seconds": 12})
    for _ in range(3):
        with queue_worker_process(flow, aws_for_localstack, **settings) as worker:
            deadline = time.monotonic() + 60
            while "task started" not in _read_some(worker):
                assert time.monotonic() < deadline, "the task never reached this worker"
            time.sleep(3)  # a few heartbeats; the handler is still far from done
            code, log = stop(worker)
        assert code == 0, log
        assert '"outcome":"released"' in log
    with queue_worker_process(flow, aws_for_localstack, **settings) as last:
        result = flow.wait(execution, timeout=90)
        _, last_log = stop(last)
    assert result["status"] == "SUCCEEDED", last_log
    assert sqs.receive_message(QueueUrl=dead_letters).get("Messages", []) == []


async def test_a_callback_task_rides_out_a_10_s_sqs_outage_with_one_handler_run(
    make_callback_flow: Any, aws_for_localstack: dict[str, str]
) -> None:
    """The SQS path of the worker running the task goes dark for 10 s of its 20 s
    visibility; a second worker watches the queue directly. The visibility is kept, so the
    second worker never gets the message: the handler runs once."""
    from ..netfaults import FaultyPath

    flow: Flow = make_callback_flow()
    endpoint = aws_for_localstack["AWS_ENDPOINT_URL_SQS"]
    host, port = endpoint.removeprefix("http://").split(":")
    settings = {
        "SFN_HANDLER": "sfn_worker.examples:sleep_handler",
        "SFN_HEARTBEAT_SECONDS": "4",  # the state's HeartbeatSeconds is 60; calls time out in 2 s
        "SFN_SQS_VISIBILITY_SECONDS": "20",
        "SFN_SHUTDOWN_GRACE_SECONDS": "3",
    }
    async with FaultyPath(host, int(port)) as path:
        through_path = {**aws_for_localstack, "AWS_ENDPOINT_URL_SQS": path.url}
        with queue_worker_process(flow, through_path, **settings) as first:
            execution = flow.start({"seconds": 30})
            deadline = time.monotonic() + 60
            while "task started" not in await asyncio.to_thread(_read_some, first):
                assert time.monotonic() < deadline, "the first worker never started the task"
            with queue_worker_process(flow, aws_for_localstack, **settings) as second:
                # Dark from just before the old cadence's first extension (at half: 10 s).
                await asyncio.sleep(8.5)
                path.black_hole()
                await asyncio.sleep(10)
                path.heal()
                result = await flow.wait_async(execution, timeout=60)
                _, second_log = await asyncio.to_thread(stop, second)
            _, first_log = await asyncio.to_thread(stop, first)
    assert result["status"] == "SUCCEEDED", first_log
    assert second_log.count("task started") == 0, second_log
    assert json.loads(result["output"])["slept"] == 30
