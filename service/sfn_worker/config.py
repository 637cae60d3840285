"""Each task source's effective settings (activities and callback queues), and their sources.

For every per-source setting the first of these wins:
1. ``SFN_<KEY>_<SETTING>`` in the environment (KEY: the activity's or queue's name
   upper-cased, every other character ``_``), so operators override one source without a
   code change;
2. the value given in code (``@app.activity(..., concurrency=4)``);
3. the process-wide default: ``SFN_<SETTING>`` (``SFN_SQS_<SETTING>`` for queue-only ones);
4. the built-in default.
The single-source form (SFN_ACTIVITY_ARN / SFN_SQS_QUEUE_URL + SFN_HANDLER) has no values in
code; its SFN_<KEY>_* variables are read and checked as an app's are.

Two sources that resolve to the same activity ARN or queue URL would share its tasks and
answer each other's with the wrong handler: a configuration error.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .app import App, Handler, Registration, is_async_handler, is_non_blocking_handler
from .settings import (
    ACTIVITY_NAME_PATTERN,
    ACTIVITY_NAME_RULE,
    DEFAULT_ORIGIN,
    Concurrency,
    HandlerMode,
    HandlerModeChoice,
    HeartbeatMode,
    HeartbeatModeChoice,
    HeartbeatSeconds,
    MaxTasksPerChild,
    OnShutdown,
    OnShutdownChoice,
    Pollers,
    Processes,
    QueueSize,
    Settings,
    SettingsError,
    VisibilitySeconds,
    check_activity_arn,
    check_queue_url,
    setting_names,
    without_userinfo,
)

FIELDS = (
    "concurrency",
    "pollers",
    "queue_size",
    "heartbeat_seconds",
    "heartbeat_mode",
    "handler_mode",
    "max_tasks_per_child",
    "processes",
)
# Callback queues only; their process-wide defaults are SFN_SQS_<SETTING>.
QUEUE_FIELDS = ("visibility_seconds", "on_shutdown", "token_field", "input_field")
ARN_SUFFIX = "ACTIVITY_ARN"
URL_SUFFIX = "QUEUE_URL"
ACTIVITY_SUFFIXES = frozenset({*(f.upper() for f in FIELDS), ARN_SUFFIX})
QUEUE_SUFFIXES = frozenset({*(f.upper() for f in (*FIELDS, *QUEUE_FIELDS)), URL_SUFFIX})
# What `sfn-worker dev` exports for other shells (the session file, each source's state
# machine): not settings, yet documented to sit beside a `sfn-worker run` in the same shell.
DEV_EXPORTS = re.compile(r"SFN_DEV_(SESSION|(.+_)?MACHINE_ARN)")
# Activity names: as Step Functions takes them (settings.ACTIVITY_NAME_PATTERN).
NAME_PATTERN = ACTIVITY_NAME_PATTERN
DEFAULT = DEFAULT_ORIGIN
CODE = "app code"


class _Options(BaseModel):
    """Validates one source's values with the same bounds as the process-wide defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    concurrency: Concurrency
    pollers: Pollers
    queue_size: QueueSize
    heartbeat_seconds: HeartbeatSeconds
    heartbeat_mode: HeartbeatModeChoice
    handler_mode: HandlerModeChoice
    max_tasks_per_child: MaxTasksPerChild
    processes: Processes
    visibility_seconds: VisibilitySeconds | None = None
    on_shutdown: OnShutdownChoice | None = None
    token_field: str | None = None
    input_field: str | None = None


@dataclass(frozen=True)
class SourceConfig:
    """What every task source shares: its name, handler, slots, pollers, heartbeats."""

    kind: ClassVar[str] = "source"
    # The field naming what the source serves (its activity's ARN, its queue's URL), the
    # key of its provenance in ``sources``; "" when it serves nothing by address.
    address_field: ClassVar[str] = ""
    uses_sqs: ClassVar[bool] = False  # needs the process's SQS clients
    name: str
    key: str
    handler: Handler
    concurrency: int
    pollers: int
    queue_size: int
    heartbeat_seconds: float
    heartbeat_mode: HeartbeatMode
    handler_mode: HandlerMode
    max_tasks_per_child: int
    processes: int  # process mode; 0 = one per CPU the container may use
    sources: Mapping[str, str]

    @property
    def effective_queue_size(self) -> int:
        return self.queue_size or self.pollers

    @property
    def heartbeat_rate_per_second(self) -> float:
        """Heartbeat calls per second when every slot holds a task."""
        return self.concurrency / self.heartbeat_seconds if self.heartbeat_seconds else 0.0

    @property
    def address(self) -> str | None:
        """What the source serves (None: not known yet, or nothing)."""
        value = getattr(self, self.address_field, None) if self.address_field else None
        return None if value is None else str(value)

    def started_fields(self) -> dict[str, str]:
        """What the "worker started" line says of this source beside the shared settings."""
        return {}

    def own_settings(self) -> list[tuple[str, str]]:
        """This kind's own settings, as (name, value) for ``check`` and ``settings``."""
        return []


@dataclass(frozen=True)
class ActivityConfig(SourceConfig):
    kind: ClassVar[str] = "activity"
    address_field: ClassVar[str] = "arn"
    arn: str | None  # None: the name is turned into an ARN at start

    def with_arn(self, arn: str) -> ActivityConfig:
        return dataclasses.replace(self, arn=arn)

    def started_fields(self) -> dict[str, str]:
        return {"arn": str(self.arn)}

    def own_settings(self) -> list[tuple[str, str]]:
        return [("arn", self.arn or "-")]


@dataclass(frozen=True)
class CallbackQueueConfig(SourceConfig):
    """An SQS queue whose messages carry task tokens (``.waitForTaskToken`` states)."""

    kind: ClassVar[str] = "queue"
    address_field: ClassVar[str] = "queue_url"
    uses_sqs: ClassVar[bool] = True
    queue_url: str
    visibility_seconds: int
    on_shutdown: OnShutdown
    token_field: str
    input_field: str

    def started_fields(self) -> dict[str, str]:
        return {"queue_url": self.queue_url, "on_shutdown": self.on_shutdown.value}

    def own_settings(self) -> list[tuple[str, str]]:
        return [("queue_url", self.queue_url)] + [
            (field, str(getattr(self, field))) for field in QUEUE_FIELDS
        ]


def activity_key(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def activity_name(ref: str) -> str:
    return ref.rsplit(":", 1)[-1] if ref.startswith("arn:") else ref


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def global_names() -> frozenset[str]:
    return setting_names()


def resolve(app: App, settings: Settings, environ: Mapping[str, str]) -> list[SourceConfig]:
    """Every source's settings; SettingsError with one line naming the variable otherwise."""
    single = app.single_form
    configs: list[SourceConfig] = []
    keys: dict[str, tuple[str, frozenset[str]]] = {}  # key -> (name, its suffixes)
    for registration in app.activities:
        name = activity_name(registration.ref)
        if registration.ref.startswith("arn:"):
            _check_arn(registration.ref, f"activity {registration.ref!r}")
        elif not re.fullmatch(NAME_PATTERN, name):
            raise SettingsError(
                f"activity {name!r}: not a valid activity name ({ACTIVITY_NAME_RULE})"
            )
        key = activity_key(name)
        label = f"activity {name!r}"
        if not single:
            _check_key(label, key, ACTIVITY_SUFFIXES, keys)
        keys[key] = (label, ACTIVITY_SUFFIXES)
        env = _environment(key, ACTIVITY_SUFFIXES, environ)
        base = _resolve_common(registration, name, key, settings, env, single)
        arn = env.get(f"SFN_{key}_{ARN_SUFFIX}") or (
            registration.ref if registration.ref.startswith("arn:") else None
        )
        base.sources["arn"] = _source_of(
            env, f"SFN_{key}_{ARN_SUFFIX}", settings.origin("activity_arn") if single else CODE
        )
        if arn is None:
            base.sources["arn"] = "resolved from the name at start"
        else:
            _check_arn(arn, f"SFN_{key}_{ARN_SUFFIX}={arn!r}")
        if single:
            _check_agree(env, f"SFN_{key}_{ARN_SUFFIX}", "SFN_ACTIVITY_ARN", registration.ref)
        configs.append(ActivityConfig(**base.fields, sources=base.sources, arn=arn))
    for registration in app.queues:
        _check_url(registration.ref, f"callback queue {registration.ref!r}")
        name = queue_name(registration.ref)
        key = activity_key(name)
        label = f"queue {name!r}"
        if not single:
            _check_key(label, key, QUEUE_SUFFIXES, keys)
        keys[key] = (label, QUEUE_SUFFIXES)
        env = _environment(key, QUEUE_SUFFIXES, environ)
        base = _resolve_common(registration, name, key, settings, env, single)
        url = env.get(f"SFN_{key}_{URL_SUFFIX}") or registration.ref
        _check_url(url, f"SFN_{key}_{URL_SUFFIX}={url!r}")
        if single:
            _check_agree(env, f"SFN_{key}_{URL_SUFFIX}", "SFN_SQS_QUEUE_URL", registration.ref)
        base.sources["queue_url"] = _source_of(
            env, f"SFN_{key}_{URL_SUFFIX}", settings.origin("sqs_queue_url") if single else CODE
        )
        configs.append(CallbackQueueConfig(**base.fields, sources=base.sources, queue_url=url))
    check_variables(environ, keys)
    check_distinct(configs)
    return configs


def _check_agree(env: Mapping[str, str], variable: str, setting: str, value: str) -> None:
    """The single form's source is the setting's value: its per-source variable naming
    another one would leave the source the user set unworked without a word."""
    other = env.get(variable)
    if other is not None and other != value:
        raise SettingsError(
            without_userinfo(
                f"{setting}={value!r} and {variable}={other!r} both name this source and "
                "differ; keep one"
            )
        )


def check_distinct(configs: Sequence[SourceConfig]) -> None:
    """No two sources on one activity ARN or queue URL (also once names are resolved)."""
    seen: dict[str, str] = {}
    for config in configs:
        where = config.address
        if where is None:
            continue
        label = f"{config.kind} {config.name!r} ({config.sources[config.address_field]})"
        if where in seen:
            raise SettingsError(
                f"{seen[where]} and {label} are both {where}: they would take each other's "
                "tasks and answer them with the wrong handler; give each its own"
            )
        seen[where] = label


@dataclass
class _Resolved:
    fields: dict[str, Any]
    sources: dict[str, str]


def _resolve_common(
    registration: Registration,
    name: str,
    key: str,
    settings: Settings,
    env: Mapping[str, str],
    single: bool,
) -> _Resolved:
    is_queue = registration.kind == "queue"
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in (*FIELDS, *(QUEUE_FIELDS if is_queue else ())):
        variable = f"SFN_{key}_{field.upper()}"
        default_field = f"sqs_{field}" if field in QUEUE_FIELDS else field
        if variable in env:
            values[field], sources[field] = env[variable], f"environment ({variable})"
        elif field in registration.options:
            values[field], sources[field] = registration.options[field], CODE
        elif settings.explicit(default_field):
            values[field] = getattr(settings, default_field)
            sources[field] = settings.origin(default_field)
        else:
            values[field], sources[field] = getattr(settings, default_field), DEFAULT
    label = f"{registration.kind} {name!r}"
    try:
        options = _Options.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, label, values, sources)) from None
    pollers = options.pollers
    if pollers > options.concurrency:
        if sources["pollers"] != DEFAULT and sources["concurrency"] != DEFAULT:
            raise SettingsError(
                f"{label}: pollers {pollers} ({_where(sources['pollers'])})"
                f" must not exceed concurrency {options.concurrency} "
                f"({_where(sources['concurrency'])}): a poller only polls with a free slot"
            )
        pollers = options.concurrency
        sources["pollers"] += f", capped at the concurrency ({options.concurrency})"
    mode = options.handler_mode
    if is_async_handler(registration.handler):
        mode, sources["handler_mode"] = HandlerMode.ASYNC, "the handler is async def"
    elif sources["handler_mode"] == DEFAULT and is_non_blocking_handler(registration.handler):
        mode, sources["handler_mode"] = HandlerMode.ASYNC, "the handler is marked @non_blocking"
    if not single:
        sources["handler"] = CODE
    elif settings.handler is not None:
        sources["handler"] = settings.origin("handler")
    else:
        sources["handler"] = "given in code"
    fields = {
        "name": name,
        "key": key,
        "handler": registration.handler,
        "concurrency": options.concurrency,
        "pollers": pollers,
        "queue_size": options.queue_size,
        "heartbeat_seconds": options.heartbeat_seconds,
        "heartbeat_mode": options.heartbeat_mode,
        "handler_mode": mode,
        "max_tasks_per_child": options.max_tasks_per_child,
        "processes": options.processes,
    }
    if is_queue:
        fields |= {field: getattr(options, field) for field in QUEUE_FIELDS}
    return _Resolved(fields, sources)


def _source_of(env: Mapping[str, str], variable: str, otherwise: str) -> str:
    return f"environment ({variable})" if variable in env else otherwise


def _environment(key: str, suffixes: frozenset[str], environ: Mapping[str, str]) -> dict[str, str]:
    # An empty variable counts as unset, as for the SFN_* settings (docker --env-file).
    return {
        f"SFN_{key}_{suffix}": environ[f"SFN_{key}_{suffix}"]
        for suffix in suffixes
        if environ.get(f"SFN_{key}_{suffix}")
    }


def _check_key(
    label: str,
    key: str,
    suffixes: frozenset[str],
    keys: Mapping[str, tuple[str, frozenset[str]]],
) -> None:
    if key in keys:
        raise SettingsError(
            f"{keys[key][0]} and {label} would share the variables SFN_{key}_*; rename one"
        )
    # Only a variable that is both: an activity named `http` or `worker` is fine (renaming
    # an AWS activity changes its ARN); a queue named `sqs` is not (SFN_SQS_QUEUE_URL).
    clashes = sorted({f"SFN_{key}_{suffix}" for suffix in suffixes} & global_names())
    if clashes:
        raise SettingsError(
            f"{label}: its variable {clashes[0]} is also a process-wide setting; rename it"
        )


def check_variables(
    environ: Mapping[str, str], keys: Mapping[str, tuple[str, frozenset[str]]]
) -> None:
    """Every ``SFN_*`` variable is a setting, or ``SFN_<KEY>_<SETTING>`` of a registered
    activity or queue; SettingsError naming the first other one, with the closest valid name.
    The prefix is the worker's: a variable of its own that it does not know is a mistake
    (a misspelt name would otherwise be a setting silently left at its default)."""
    known = global_names()
    per_source = {
        f"SFN_{key}_{suffix}" for key, (_, suffixes) in keys.items() for suffix in suffixes
    }
    every_suffix = ACTIVITY_SUFFIXES | QUEUE_SUFFIXES
    for variable in sorted(environ):
        if not variable.upper().startswith("SFN_") or variable in known | per_source:
            continue
        if DEV_EXPORTS.fullmatch(variable):
            continue
        # A name with a line break or an escape sequence is shown quoted: still one line.
        shown = variable if variable.isprintable() else repr(variable)
        hint = _did_you_mean(variable.upper(), known | per_source)
        if variable != variable.upper():
            # Names are upper-case: a lower-case one would be read for some settings (the
            # process-wide ones) and not others (per source).
            raise SettingsError(f"{shown}: not a setting (names are upper-case){hint}")
        rest = variable.removeprefix("SFN_")
        owners = [k for k in keys if rest.startswith(f"{k}_")]
        if owners:
            owner = max(owners, key=len)
            label, suffixes = keys[owner]
            raise SettingsError(
                f"{shown}: {label} has no setting {rest.removeprefix(f'{owner}_')!r} "
                f"(known: {', '.join(sorted(suffixes))}){hint}"
            )
        if keys and any(rest.endswith(f"_{suffix}") for suffix in every_suffix):
            names = ", ".join(label for label, _ in keys.values())
            raise SettingsError(f"{shown} matches no activity or queue (have: {names}){hint}")
        raise SettingsError(f"{shown}: not a setting{hint or ' (see sfn-worker settings)'}")


def _did_you_mean(variable: str, names: frozenset[str] | set[str]) -> str:
    close = difflib.get_close_matches(variable, sorted(names), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def source_keys(
    activities: Sequence[str], queues: Sequence[str]
) -> dict[str, tuple[str, frozenset[str]]]:
    """Each source's variable key, its label and its settings' suffixes (activities by ARN
    or name, queues by URL): what ``check_variables`` needs, known before any import."""
    keys: dict[str, tuple[str, frozenset[str]]] = {}
    for ref in activities:
        name = activity_name(ref)
        keys[activity_key(name)] = (f"activity {name!r}", ACTIVITY_SUFFIXES)
    for url in queues:
        name = queue_name(url)
        keys[activity_key(name)] = (f"queue {name!r}", QUEUE_SUFFIXES)
    return keys


def _check_arn(arn: str, what: str) -> None:
    try:
        check_activity_arn(arn)
    except ValueError as exc:
        raise SettingsError(f"{what} is invalid: {exc}") from None


def _check_url(url: str, what: str) -> None:
    try:
        check_queue_url(url)
    except ValueError as exc:
        raise SettingsError(without_userinfo(f"{what} is invalid: {exc}")) from None


def _where(source: str) -> str:
    """The variable or flag in ``environment (SFN_X)`` or ``flag (--x)``; else the source."""
    found = re.fullmatch(r"(?:environment|flag) \((.+)\)", source)
    return found.group(1) if found else source


def _describe(
    exc: ValidationError, label: str, values: Mapping[str, Any], sources: Mapping[str, str]
) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error.get("loc") else ""
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        source = sources.get(field, "")
        if source.startswith("environment ("):
            problems.append(f"{_where(source)}={values[field]!r} is invalid: {message}")
        else:
            problems.append(f"{label}: {field}={values[field]!r} ({source}) is invalid: {message}")
    return "; ".join(problems)


def activities(configs: Sequence[SourceConfig]) -> list[ActivityConfig]:
    return [c for c in configs if isinstance(c, ActivityConfig)]
