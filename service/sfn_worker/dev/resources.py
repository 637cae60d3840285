"""What a dev session creates in LocalStack for each source: what its kind needs (dev/kinds.py:
an activity, an SQS queue) and a one-state machine that hands it a task."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import boto3

from .discover import Source
from .kinds import dev_kind

REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::000000000000:role/sfn-worker-dev"  # LocalStack does not check it
# LocalStack times a Task state out after 60 s unless it says otherwise; a dev handler may
# run for longer, or sit in a debugger.
TASK_TIMEOUT_SECONDS = 3600
# LocalStack answers heartbeats of a state without HeartbeatSeconds with InvalidToken (AWS
# accepts them), which the worker reads as "task gone": every dev state has one.
HEARTBEAT_SECONDS = 300
# A task running when the worker restarts is answered Worker.Shutdown: run it again, on the
# new code.
RETRY_ON_RESTART = {
    "ErrorEquals": ["Worker.Shutdown"],
    "IntervalSeconds": 1,
    "MaxAttempts": 3,
    "BackoffRate": 1.0,
}


@dataclass(frozen=True)
class Created:
    source: Source
    address: str  # the activity's ARN or the queue's URL
    machine_arn: str


def credentials() -> dict[str, str]:
    return {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


def client(service: str, endpoint_url: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION, **credentials())


def task_state(source: Source, address: str) -> dict[str, Any]:
    state: dict[str, Any] = {"Type": "Task", **dev_kind(source.kind).resource(address)}
    state.update(
        TimeoutSeconds=TASK_TIMEOUT_SECONDS,
        HeartbeatSeconds=HEARTBEAT_SECONDS,
        Retry=[RETRY_ON_RESTART],
        End=True,
    )
    return state


def definition(source: Source, address: str) -> str:
    return json.dumps({"StartAt": "Run", "States": {"Run": task_state(source, address)}})


class Resources:
    """Creates each source once per session (a reload may name new ones)."""

    def __init__(self, endpoint_url: str) -> None:
        self._sfn = client("stepfunctions", endpoint_url)
        self._sqs = client("sqs", endpoint_url)
        self.created: dict[tuple[str, str], Created] = {}

    def ensure(self, sources: tuple[Source, ...]) -> list[Created]:
        for source in sources:
            if (source.kind, source.name) not in self.created:
                self.created[(source.kind, source.name)] = self._create(source)
        return [self.created[(source.kind, source.name)] for source in sources]

    def _create(self, source: Source) -> Created:
        address = dev_kind(source.kind).create(self._sfn, self._sqs, source.name)
        machine = self._sfn.create_state_machine(
            name=f"dev-{source.kind}-{source.name}"[:80],
            definition=definition(source, address),
            roleArn=ROLE_ARN,
        )
        return Created(source, address, str(machine["stateMachineArn"]))
