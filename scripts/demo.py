"""The seed flow over an activity and over SQS, and a second activity, on LocalStack:
`make demo`.

Starts LocalStack, creates what the example app (sfn_worker.examples:app) serves: the
activities "seed-activity" (seed handler) and "uppercase", and the SQS queue
"seed-callbacks" (seed handler, for a state using sqs:sendMessage.waitForTaskToken), with a
state machine for each (config/demo-state-machine.json, config/demo-callback-machine.json).
Starts `sfn-worker run sfn_worker.examples:app` as a real subprocess (one process serving
all three; the activity names become ARNs at start, the queue's URL comes from
SFN_SEED_CALLBACKS_QUEUE_URL), runs the seed flow ({"in": "SUCCESS"}, {"in": "RANDOM"})
both ways and one "uppercase" execution, prints how each ended, then sends SIGTERM to the
worker and stops LocalStack.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulator import CONFIG, EmulatorError, LocalStack
from sfn_worker.dev.resources import REGION
from sfn_worker.dev.supervisor import aws_environment

ROLE_ARN = "arn:aws:iam::000000000000:role/demo-role"  # LocalStack does not check it
EXECUTION_TIMEOUT_SECONDS = 60.0


APP = "sfn_worker.examples:app"
QUEUE = "seed-callbacks"
# (activity or queue, input) in the order the demo runs them.
EXECUTIONS = [
    ("seed-activity", {"in": "SUCCESS"}),
    ("seed-activity", {"in": "RANDOM"}),
    (QUEUE, {"in": "SUCCESS"}),
    (QUEUE, {"in": "RANDOM"}),
    ("uppercase", {"text": "hello from the demo"}),
]


def aws_client(service: str, endpoint_url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def state_machine_definition(activity_arn: str) -> str:
    definition = json.loads((CONFIG / "demo-state-machine.json").read_text())
    definition.pop("Comment", None)
    definition["States"]["TestActivity"]["Resource"] = activity_arn
    return json.dumps(definition)


def callback_machine_definition(queue_url: str) -> str:
    definition = json.loads((CONFIG / "demo-callback-machine.json").read_text())
    definition.pop("Comment", None)
    definition["States"]["SendTaskToken"]["Parameters"]["QueueUrl"] = queue_url
    return json.dumps(definition)


def wait_for_execution(client: Any, execution_arn: str) -> dict[str, Any]:
    deadline = time.monotonic() + EXECUTION_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        described: dict[str, Any] = client.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.2)  # an external service: polling its status is the only way
    raise TimeoutError(f"execution still RUNNING after {EXECUTION_TIMEOUT_SECONDS:.0f}s")


def worker_command() -> list[str]:
    script = Path(sys.executable).parent / "sfn-worker"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sfn_worker"]
    return [*command, "run", APP]


def run_demo() -> int:
    with LocalStack() as emulator, tempfile.TemporaryDirectory() as tmp:
        print(f"LocalStack (Step Functions, STS, SQS) is up at {emulator.endpoint_url}")
        client = aws_client("stepfunctions", emulator.endpoint_url)
        queue_url = aws_client("sqs", emulator.endpoint_url).create_queue(QueueName=QUEUE)[
            "QueueUrl"
        ]
        machines = {}
        for name in dict.fromkeys(name for name, _ in EXECUTIONS):
            if name == QUEUE:
                definition = callback_machine_definition(queue_url)
                print(f"queue:         {queue_url}")
            else:
                activity_arn = client.create_activity(name=name)["activityArn"]
                definition = state_machine_definition(activity_arn)
                print(f"activity:      {activity_arn}")
            machines[name] = client.create_state_machine(
                name=f"{name}-machine", definition=definition, roleArn=ROLE_ARN
            )["stateMachineArn"]
            print(f"state machine: {machines[name]}")

        worker_log = Path(tmp) / "worker.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SFN_"))}
        env.update(aws_environment(emulator.endpoint_url))
        env.update(
            SFN_SEED_CALLBACKS_QUEUE_URL=queue_url,
            SFN_WORKER_NAME="demo-worker",
            SFN_LOG_FORMAT="console",
            # Open 60 s long polls would hold a default 25 s grace; the demo has no more work.
            SFN_SHUTDOWN_GRACE_SECONDS="3",
        )
        command = worker_command()
        with open(worker_log, "wb") as log:
            worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        print(f"worker:        sfn-worker run {APP} (pid {worker.pid})")
        try:
            executions = [
                (
                    activity,
                    payload,
                    client.start_execution(
                        stateMachineArn=machines[activity],
                        name=f"demo-{activity}-{uuid.uuid4().hex[:8]}",
                        input=json.dumps(payload),
                    )["executionArn"],
                )
                for activity, payload in EXECUTIONS
            ]
            print()
            for activity, payload, arn in executions:
                result = wait_for_execution(client, arn)
                print(f"{activity:<15}input {json.dumps(payload)}")
                print(f"  status {result['status']}")
                if result["status"] == "SUCCEEDED":
                    print(f"  output {json.dumps(json.loads(result['output']))}")
                else:
                    print(f"  error  {result.get('error')}")
                    print(f"  cause  {result.get('cause')}")
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(timeout=40)
            except subprocess.TimeoutExpired:
                worker.kill()
                code = worker.wait()
        print()
        print(f"worker stopped with SIGTERM, exit code {code}; its log:")
        for line in worker_log.read_text(errors="replace").splitlines():
            print(f"  | {line}")
    print("LocalStack stopped.")
    return 0 if code == 0 else 1


def main() -> int:
    # SIGTERM to the demo unwinds the `with` blocks, so LocalStack and the worker stop too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run_demo()
    except EmulatorError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
