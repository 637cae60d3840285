"""Each kind of task source's per-source settings, declared once: one pydantic model per kind.

A per-source setting is a field here (and the process-wide setting that is its default,
in settings.py). From the models come its environment variable (``SFN_<KEY>_<FIELD>``),
the names ``check_variables`` knows, the resolution order (environment > code >
process-wide > built-in, config.py) and its provenance, the lines of ``check`` and
``settings``, and the keywords ``App.activity`` / ``App.callback_queue`` accept. What a
type checker or a reader needs written out (the keywords' types below, the docs table) is
held to the models by tests/test_source_options.py, which prints what to write.

Each field is ``Annotated[<bounded type from settings.py>, Option(<process-wide setting>,
<description>)]``: the bounds are the process-wide setting's, and its value (or built-in
default) is the source's default.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, ClassVar, TypedDict

from pydantic import BaseModel, ConfigDict

from .settings import (
    Concurrency,
    HandlerMode,
    HandlerModeChoice,
    HeartbeatMode,
    HeartbeatModeChoice,
    HeartbeatSeconds,
    MaxTasksPerChild,
    NonBlank,
    OnShutdown,
    OnShutdownChoice,
    Pollers,
    Processes,
    QueueSize,
    VisibilitySeconds,
)


@dataclass(frozen=True)
class Option:
    """A per-source setting: the process-wide setting (a ``Settings`` field) that is its
    default, and one line saying what it does (docs/settings.md's table shows it)."""

    setting: str
    description: str


class SourceOptions(BaseModel):
    """What every kind of source takes, in the order ``check`` and ``settings`` show it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # The per-source variable naming what the source serves (SFN_<KEY>_<ADDRESS_SUFFIX>),
    # and what it does; "" when it serves nothing by address.
    address_suffix: ClassVar[str] = ""
    address_description: ClassVar[str] = ""

    handler_mode: Annotated[
        HandlerModeChoice,
        Option("handler_mode", "where a sync handler runs: thread, process or async"),
    ]
    concurrency: Annotated[Concurrency, Option("concurrency", "tasks worked at once")]
    pollers: Annotated[
        Pollers, Option("pollers", "most open polls, one per free slot (at most the concurrency)")
    ]
    queue_size: Annotated[
        QueueSize, Option("queue_size", "tasks taken but not started, 0 = the pollers")
    ]
    heartbeat_seconds: Annotated[
        HeartbeatSeconds, Option("heartbeat_seconds", "heartbeat interval per task, 0 = off")
    ]
    heartbeat_mode: Annotated[
        HeartbeatModeChoice,
        Option("heartbeat_mode", "timer: every interval; progress: after ctx.heartbeat()"),
    ]
    max_tasks_per_child: Annotated[
        MaxTasksPerChild,
        Option("max_tasks_per_child", "process mode: tasks before a handler process is replaced"),
    ]
    processes: Annotated[
        Processes,
        Option("processes", "process mode: handler processes, 0 = one per CPU it may use"),
    ]


class ActivityOptions(SourceOptions):
    """An activity's settings: the shared ones (its ARN is its address)."""

    address_suffix: ClassVar[str] = "ACTIVITY_ARN"
    address_description: ClassVar[str] = (
        "the activity's ARN, instead of the one in code or its name's"
    )


class QueueOptions(SourceOptions):
    """A callback queue's settings; their process-wide defaults are SFN_SQS_<SETTING>."""

    address_suffix: ClassVar[str] = "QUEUE_URL"
    address_description: ClassVar[str] = "the queue's URL, instead of the one in code"

    visibility_seconds: Annotated[
        VisibilitySeconds,
        Option("sqs_visibility_seconds", "how long a received message stays invisible"),
    ]
    on_shutdown: Annotated[
        OnShutdownChoice,
        Option("sqs_on_shutdown", "a task still running at the end of the grace: release or fail"),
    ]
    token_field: Annotated[
        NonBlank, Option("sqs_token_field", "the message body's field holding the task token")
    ]
    input_field: Annotated[
        NonBlank, Option("sqs_input_field", "the message body's field holding the task input")
    ]


# Each kind an app registers (App.activity, App.callback_queue), by Registration.kind.
KINDS: dict[str, type[SourceOptions]] = {"activity": ActivityOptions, "queue": QueueOptions}


def options(model: type[SourceOptions]) -> Iterator[tuple[str, Option]]:
    """Each per-source setting of ``model``: its field name and its Option, in order."""
    for name, info in model.model_fields.items():
        marks = [mark for mark in info.metadata if isinstance(mark, Option)]
        if marks:
            yield name, marks[0]


def own_options(model: type[SourceOptions]) -> list[str]:
    """The settings only this kind has (beside those every source shares)."""
    return [name for name, _ in options(model) if name not in SourceOptions.model_fields]


def suffixes(model: type[SourceOptions]) -> frozenset[str]:
    """The ``<SETTING>`` of every ``SFN_<KEY>_<SETTING>`` a source of this kind reads."""
    names = {name.upper() for name, _ in options(model)}
    return frozenset({*names, model.address_suffix} - {""})


def show(value: object) -> str:
    """A setting's value as ``check`` and ``settings`` print it ("-": not set)."""
    if value is None:
        return "-"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    # A line break or an escape sequence (a field name may hold any) stays on its line.
    return text if text.isprintable() else repr(text)


# The keywords of App.activity / App.callback_queue, for type checkers (Unpack). A typing
# construct cannot be computed from the models; tests/test_source_options.py checks that
# these name the same fields with compatible types. Choices also take their values as str;
# None is "not given".
class ActivityKeywords(TypedDict, total=False):
    handler_mode: HandlerMode | str | None
    concurrency: int | None
    pollers: int | None
    queue_size: int | None
    heartbeat_seconds: float | None
    heartbeat_mode: HeartbeatMode | str | None
    max_tasks_per_child: int | None
    processes: int | None


class QueueKeywords(ActivityKeywords, total=False):
    visibility_seconds: int | None
    on_shutdown: OnShutdown | str | None
    token_field: str | None
    input_field: str | None


KEYWORDS: dict[type[SourceOptions], type[ActivityKeywords]] = {
    ActivityOptions: ActivityKeywords,
    QueueOptions: QueueKeywords,
}
