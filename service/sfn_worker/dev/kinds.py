"""What `sfn-worker dev` does for each kind of source, described once, keyed by its config
class: which of an app's sources are of the kind, what the session creates for one in
LocalStack, the Task state that hands it a task, and the variable that points the worker at
it. The rest of dev/ reads this table and never a kind's name: a new kind adds one entry
(``once`` has none: an app does not register it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..app import App
from ..config import (
    ARN_SUFFIX,
    URL_SUFFIX,
    ActivityConfig,
    CallbackQueueConfig,
    SourceConfig,
    activity_name,
    queue_name,
)

# What LocalStack's addresses look like, for checking settings before it runs.
EXAMPLE_ARN = "arn:aws:states:us-east-1:000000000000"
EXAMPLE_QUEUES = "http://127.0.0.1:1/queue/us-east-1/000000000000"
WAIT_FOR_SQS_CALLBACK = "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
FIFO = ".fifo"


@dataclass(frozen=True)
class DevKind:
    suffix: str  # SFN_<KEY>_<suffix> names the source's address (the app form)
    names: Callable[[App], list[str]]  # the app's sources of this kind, by name
    create: Callable[[Any, Any, str], str]  # (sfn, sqs clients, name): the address created
    example: Callable[[str], str]  # the address LocalStack would give the name
    resource: Callable[[str], dict[str, Any]]  # the Task state's Resource (and Parameters)


def _sqs_callback(url: str) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "QueueUrl": url,
        "MessageBody": {"TaskToken.$": "$$.Task.Token", "Input.$": "$"},
    }
    if url.endswith(FIFO):
        # A FIFO queue takes no message without a group: one per execution.
        parameters["MessageGroupId.$"] = "$$.Execution.Name"
    return {"Resource": WAIT_FOR_SQS_CALLBACK, "Parameters": parameters}


def _create_queue(sqs: Any, name: str) -> str:
    # A `.fifo` name is refused unless the queue is created as one; the body (it holds the
    # task token) is unique, so it deduplicates.
    fifo = {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    attributes = fifo if name.endswith(FIFO) else {}
    return str(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])


DEV_KINDS: dict[type[SourceConfig], DevKind] = {
    ActivityConfig: DevKind(
        suffix=ARN_SUFFIX,
        names=lambda app: [activity_name(r.ref) for r in app.activities],
        create=lambda sfn, sqs, name: str(sfn.create_activity(name=name)["activityArn"]),
        example=lambda name: f"{EXAMPLE_ARN}:activity:{name}",
        resource=lambda arn: {"Resource": arn},
    ),
    CallbackQueueConfig: DevKind(
        suffix=URL_SUFFIX,
        names=lambda app: [queue_name(r.ref) for r in app.queues],
        create=lambda sfn, sqs, name: _create_queue(sqs, name),
        example=lambda name: f"{EXAMPLE_QUEUES}/{name}",
        resource=_sqs_callback,
    ),
}
# The single form (SFN_HANDLER, no app) serves one activity, through SFN_ACTIVITY_ARN.
SINGLE_KIND = ActivityConfig.kind
SINGLE_VARIABLE = f"SFN_{ARN_SUFFIX}"


def dev_kind(kind: str) -> DevKind:
    """The entry of the kind a session's source names (its config class's ``kind``)."""
    for config_class, entry in DEV_KINDS.items():
        if config_class.kind == kind:
            return entry
    raise KeyError(f"sfn-worker dev cannot serve a source of kind {kind!r}")


def app_sources(app: App) -> list[tuple[str, str]]:
    """(kind, name) of every source the app registers, kind by kind."""
    return [
        (config_class.kind, name)
        for config_class, entry in DEV_KINDS.items()
        for name in entry.names(app)
    ]
