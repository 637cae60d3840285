"""LocalStack for the integration tests: started once per session, always stopped.

If LocalStack cannot be installed or started the tests fail (never skip): CI must not pass
without having talked to a real Step Functions implementation.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from emulator import EmulatorError, LocalStack

REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::000000000000:role/integration-tests"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.localstack)
            item.add_marker(pytest.mark.timeout(120))


@pytest.fixture(scope="session")
def localstack() -> Iterator[LocalStack]:
    emulator = LocalStack()
    try:
        emulator.start()
    except EmulatorError as exc:
        pytest.fail(f"LocalStack could not start: {exc}", pytrace=False)
    try:
        yield emulator
    finally:
        emulator.stop()


@dataclass
class Flow:
    """An activity (or a callback queue) and a one-state machine that uses it."""

    sfn: Any
    activity_arn: str
    machine_arn: str
    queue_url: str = ""

    def start(self, payload: Any) -> str:
        arn: str = self.sfn.start_execution(
            stateMachineArn=self.machine_arn,
            name=f"exec-{uuid.uuid4().hex[:12]}",
            input=json.dumps(payload),
        )["executionArn"]
        return arn

    def wait(self, execution_arn: str, timeout: float = 60.0) -> dict[str, Any]:
        # LocalStack is another process with no push API: its status is polled, bounded.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            described: dict[str, Any] = self.sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                return described
            time.sleep(0.1)
        raise AssertionError(f"execution still RUNNING after {timeout}s")

    async def wait_async(self, execution_arn: str, timeout: float = 60.0) -> dict[str, Any]:
        return await asyncio.to_thread(self.wait, execution_arn, timeout)

    def history_types(self, execution_arn: str) -> list[str]:
        events = self.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)
        return [event["type"] for event in events["events"]]


@pytest.fixture
def aws_for_localstack(localstack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL_SFN": localstack.endpoint_url,
        "AWS_ENDPOINT_URL_STS": localstack.endpoint_url,
        "AWS_ENDPOINT_URL_SQS": localstack.endpoint_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def make_flow(localstack: LocalStack, aws_for_localstack: dict[str, str]) -> Any:
    sfn = boto3.client(
        "stepfunctions",
        endpoint_url=localstack.endpoint_url,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )

    def make(activity_name: str = "", **state_fields: Any) -> Flow:
        suffix = uuid.uuid4().hex[:10]
        activity_name = activity_name or f"activity-{suffix}"
        activity_arn = sfn.create_activity(name=activity_name)["activityArn"]
        state: dict[str, Any] = {"Type": "Task", "Resource": activity_arn, "End": True}
        state.update(state_fields)
        definition = {"StartAt": "TestActivity", "States": {"TestActivity": state}}
        machine_arn = sfn.create_state_machine(
            name=f"machine-{suffix}", definition=json.dumps(definition), roleArn=ROLE_ARN
        )["stateMachineArn"]
        return Flow(sfn, activity_arn, machine_arn)

    return make


# What a state machine writes for a callback task over SQS (JSONPath).
def callback_state(queue_url: str) -> dict[str, Any]:
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {
            "QueueUrl": queue_url,
            "MessageBody": {"TaskToken.$": "$$.Task.Token", "Input.$": "$"},
        },
        # LocalStack answers heartbeats of a state without HeartbeatSeconds with
        # InvalidToken (AWS accepts them): give every waiting state one.
        "HeartbeatSeconds": 60,
        "End": True,
    }


@pytest.fixture
def make_callback_flow(localstack: LocalStack, aws_for_localstack: dict[str, str]) -> Any:
    """A queue and a state machine whose one state sends the task token over it."""
    options = {
        "endpoint_url": localstack.endpoint_url,
        "region_name": REGION,
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
    }
    sfn = boto3.client("stepfunctions", **options)
    sqs = boto3.client("sqs", **options)

    def make(*, state: dict[str, Any] | None = None, **queue_attributes: str) -> Flow:
        suffix = uuid.uuid4().hex[:10]
        queue_url = sqs.create_queue(QueueName=f"callbacks-{suffix}", Attributes=queue_attributes)[
            "QueueUrl"
        ]
        waiting = {**callback_state(queue_url), **(state or {})}
        definition = {"StartAt": "Wait", "States": {"Wait": waiting}}
        machine_arn = sfn.create_state_machine(
            name=f"callback-machine-{suffix}", definition=json.dumps(definition), roleArn=ROLE_ARN
        )["stateMachineArn"]
        return Flow(sfn, "", machine_arn, queue_url)

    return make
