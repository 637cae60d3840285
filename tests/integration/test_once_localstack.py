"""``sfn-worker once`` against LocalStack: a real token from a ``.waitForTaskToken`` state
(the SQS integration hands it out the way the ECS one passes it to a container)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from .conftest import Flow
from .test_localstack import WORKER_BIN, boto3_sqs


def _take_token(flow: Flow, aws: dict[str, str]) -> tuple[str, Any]:
    """The token and input the state sent, as an ECS override would pass them."""
    sqs = boto3_sqs(aws)
    for _ in range(3):  # each receive waits up to 20 s for the state to send it
        messages = sqs.receive_message(
            QueueUrl=flow.queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=20
        ).get("Messages", [])
        if messages:
            sqs.delete_message(QueueUrl=flow.queue_url, ReceiptHandle=messages[0]["ReceiptHandle"])
            body = json.loads(messages[0]["Body"])
            return body["TaskToken"], body["Input"]
    raise AssertionError("the state never sent its task token")


def _once(aws: dict[str, str], token: str, task_input: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    env.update(
        aws,
        SFN_TASK_TOKEN=token,
        SFN_TASK_INPUT=json.dumps(task_input),
        SFN_HANDLER="sfn_worker.examples:seed_handler",
        SFN_WORKER_NAME="integration-once",
    )
    return subprocess.run(
        [str(WORKER_BIN), "once"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_once_answers_a_real_token_both_branches(
    make_callback_flow: Any, aws_for_localstack: dict[str, str]
) -> None:
    flow: Flow = make_callback_flow()
    outcomes = {}
    for payload in ({"in": "SUCCESS"}, {"in": "RANDOM"}):
        execution = flow.start(payload)
        token, task_input = _take_token(flow, aws_for_localstack)
        done = _once(aws_for_localstack, token, task_input)
        assert done.returncode == 0, done.stderr
        assert token not in done.stderr  # never a whole token in the logs
        outcomes[payload["in"]] = flow.wait(execution)
    succeeded, failed = outcomes["SUCCESS"], outcomes["RANDOM"]
    assert succeeded["status"] == "SUCCEEDED"
    assert json.loads(succeeded["output"]) == {"result": {"in": "SUCCESS"}}
    assert failed["status"] == "FAILED"
    assert (failed["error"], failed["cause"]) == ("NO_SUCCESS_INPUT", 'Input is not "SUCCESS"')


def test_once_exits_1_when_the_token_cannot_be_answered(aws_for_localstack: dict[str, str]) -> None:
    done = _once(aws_for_localstack, "not-a-task-token", {"in": "SUCCESS"})
    assert done.returncode == 1, done.stderr
