"""``sfn-worker dev start INPUT [--activity NAME]``: one execution of a source's dev state
machine, from another shell; prints how it ended."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .resources import TASK_TIMEOUT_SECONDS, client
from .session import Session, SessionError, SourceRecord, find

POLL_SECONDS = 0.2  # LocalStack has no push API for an execution's end: its status is polled


class StartError(Exception):
    """What the user gave cannot start an execution; the message says why."""


def choose(session: Session, name: str | None) -> SourceRecord:
    names = ", ".join(source.name for source in session.sources)
    if name is None:
        if len(session.sources) == 1:
            return session.sources[0]
        raise StartError(f"the session serves several sources ({names}): pick one with --activity")
    for source in session.sources:
        if source.name == name:
            return source
    raise StartError(f"--activity {name!r}: the session has no such source (has: {names})")


def wait_for_end(sfn: Any, execution_arn: str) -> dict[str, Any]:
    deadline = time.monotonic() + TASK_TIMEOUT_SECONDS + 60
    while True:
        described: dict[str, Any] = sfn.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING" or time.monotonic() > deadline:
            return described
        time.sleep(POLL_SECONDS)


def start(
    input_text: str | None, activity: str | None, project: Path, environ: Mapping[str, str]
) -> int:
    try:
        payload = json.loads(input_text if input_text is not None else "{}")
    except ValueError as exc:
        raise StartError(f"the input is not JSON: {exc}") from None
    try:
        _, session = find(project, dict(environ))
    except SessionError as exc:
        raise StartError(str(exc)) from None
    source = choose(session, activity)
    sfn = client("stepfunctions", session.endpoint_url)
    try:
        execution_arn = str(
            sfn.start_execution(
                stateMachineArn=source.machine_arn,
                name=f"dev-{uuid.uuid4().hex[:12]}",
                input=json.dumps(payload),
            )["executionArn"]
        )
    except (BotoCoreError, ClientError) as exc:
        raise StartError(f"cannot start an execution at {session.endpoint_url}: {exc}") from None
    print(f"execution {execution_arn}", flush=True)
    try:
        described = wait_for_end(sfn, execution_arn)
    except KeyboardInterrupt:
        print("stopped waiting; the execution goes on", file=sys.stderr)
        return 130
    except (BotoCoreError, ClientError) as exc:
        # The session stopped while we waited (its LocalStack, and the execution, are gone).
        print(
            f"sfn-worker dev start: lost the dev session at {session.endpoint_url} while "
            f"waiting (has it stopped?): {exc}",
            file=sys.stderr,
        )
        return 1
    status = described["status"]
    print(f"status    {status}")
    if status == "SUCCEEDED":
        output = json.loads(described.get("output") or "null")
        print(f"output    {json.dumps(output, ensure_ascii=False)}")
        return 0
    for field in ("error", "cause"):
        if described.get(field):
            print(f"{field:<9} {described[field]}")
    return 1
