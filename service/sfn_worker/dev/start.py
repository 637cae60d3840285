"""``sfn-worker dev start INPUT [--activity NAME]``: one execution of a source's dev state
machine, from another shell; prints how it ended."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from .resources import TASK_TIMEOUT_SECONDS, client
from .session import Session, SessionError, SourceRecord, find, read

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


def wait_for_end(
    sfn: Any, execution_arn: str, each_poll: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    deadline = time.monotonic() + TASK_TIMEOUT_SECONDS + 60
    while True:
        each_poll()
        described: dict[str, Any] = sfn.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING" or time.monotonic() > deadline:
            return described
        time.sleep(POLL_SECONDS)


class WorkerNotes:
    """Says at once, and again on each change, that the session's worker does not run (a
    config error, a module that no longer loads): else the execution would wait silently
    for its timeout."""

    def __init__(self, path: Path, session: Session) -> None:
        self.path = path
        self.last: str | None = None
        self.show(session)

    def show(self, session: Session) -> None:
        note = session.worker_note()
        if note != self.last and (note is not None or self.last is not None):
            print(f"sfn-worker dev start: {note or 'the dev worker runs again'}", file=sys.stderr)
        self.last = note

    def __call__(self) -> None:
        with contextlib.suppress(SessionError):  # a session that ends: the next call says so
            self.show(read(self.path))


def read_input(text: str | None, stdin: IO[str]) -> Any:
    """The input as given: JSON, ``@file.json`` (the file's JSON) or ``-`` (stdin's)."""
    where = "the input"
    if text is None:
        text = "{}"
    elif text == "-":
        where, text = "the input on stdin", stdin.read()
    elif text.startswith("@"):
        where = f"the input file {text[1:]}"
        try:
            text = Path(text[1:]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise StartError(f"cannot read {where}: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StartError(f"{where} is not JSON: {exc}") from None


def start(
    input_text: str | None, activity: str | None, project: Path, environ: Mapping[str, str]
) -> int:
    payload = read_input(input_text, sys.stdin)
    try:
        path, session, note = find(project, dict(environ))
    except SessionError as exc:
        raise StartError(str(exc)) from None
    if note:
        print(f"sfn-worker dev start: {note}", file=sys.stderr)
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
        described = wait_for_end(sfn, execution_arn, WorkerNotes(path, session))
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
