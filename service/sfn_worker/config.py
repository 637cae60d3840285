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

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ConfigDict, ValidationError

from .app import App, Handler, Registration, is_async_handler, is_non_blocking_handler
from .settings import (
    ACTIVITY_NAME_PATTERN,
    ACTIVITY_NAME_RULE,
    DEFAULT_ORIGIN,
    HandlerMode,
    Settings,
    SettingsError,
    check_activity_arn,
    check_queue_url,
    setting_names,
    without_userinfo,
)
from .source_options import (
    ActivityOptions,
    QueueOptions,
    SourceOptions,
    options,
    own_options,
    show,
    suffixes,
)

ACTIVITY_SUFFIXES = suffixes(ActivityOptions)
QUEUE_SUFFIXES = suffixes(QueueOptions)
ARN_SUFFIX = ActivityOptions.address_suffix
URL_SUFFIX = QueueOptions.address_suffix
# What `sfn-worker dev` exports for other shells (the session file, each source's state
# machine): not settings, yet documented to sit beside a `sfn-worker run` in the same shell.
DEV_EXPORTS = re.compile(r"SFN_DEV_(SESSION|(.+_)?MACHINE_ARN)")
# Activity names: as Step Functions takes them (settings.ACTIVITY_NAME_PATTERN).
NAME_PATTERN = ACTIVITY_NAME_PATTERN
DEFAULT = DEFAULT_ORIGIN
CODE = "app code"


class SourceConfig(SourceOptions):
    """A source as resolved: what every source shares (its name, handler and the settings
    of source_options.SourceOptions), and where each setting came from (``sources``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str] = "source"
    # The kind's settings (source_options.py): what resolve reads and validates.
    options_model: ClassVar[type[SourceOptions]] = SourceOptions
    # The field naming what the source serves (its activity's ARN, its queue's URL), the
    # key of its provenance in ``sources``; "" when it serves nothing by address.
    address_field: ClassVar[str] = ""
    uses_sqs: ClassVar[bool] = False  # needs the process's SQS clients
    name: str
    key: str
    handler: Handler
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
        """Its address and this kind's own settings, as (name, value) for ``check`` and
        ``settings`` (the shared ones follow them)."""
        address = [(self.address_field, show(self.address))] if self.address_field else []
        return address + [
            (field, show(getattr(self, field))) for field in own_options(self.options_model)
        ]


class ActivityConfig(SourceConfig, ActivityOptions):
    kind: ClassVar[str] = "activity"
    options_model: ClassVar[type[SourceOptions]] = ActivityOptions
    address_field: ClassVar[str] = "arn"
    arn: str | None  # None: the name is turned into an ARN at start

    def with_arn(self, arn: str) -> ActivityConfig:
        return self.model_copy(update={"arn": arn})

    def started_fields(self) -> dict[str, str]:
        return {"arn": str(self.arn)}


class CallbackQueueConfig(SourceConfig, QueueOptions):
    """An SQS queue whose messages carry task tokens (``.waitForTaskToken`` states)."""

    kind: ClassVar[str] = "queue"
    options_model: ClassVar[type[SourceOptions]] = QueueOptions
    address_field: ClassVar[str] = "queue_url"
    uses_sqs: ClassVar[bool] = True
    queue_url: str

    def started_fields(self) -> dict[str, str]:
        return {"queue_url": self.queue_url, "on_shutdown": self.on_shutdown.value}


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
        _add_key(keys, key, label, ACTIVITY_SUFFIXES)
        env = _environment(key, ACTIVITY_SUFFIXES, environ)
        base = _resolve_common(registration, ActivityOptions, name, key, settings, env, single)
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
        _add_key(keys, key, label, QUEUE_SUFFIXES)
        env = _environment(key, QUEUE_SUFFIXES, environ)
        base = _resolve_common(registration, QueueOptions, name, key, settings, env, single)
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


# Where a per-source value was set, from farthest to closest to the source.
_LEVELS = {"default": 0, "process-wide": 1, "code": 2, "per source": 3}


@dataclass
class _Resolved:
    fields: dict[str, Any]
    sources: dict[str, str]


def _resolve_common(
    registration: Registration,
    model: type[SourceOptions],
    name: str,
    key: str,
    settings: Settings,
    env: Mapping[str, str],
    single: bool,
) -> _Resolved:
    """Each of ``model``'s settings, the first of: SFN_<KEY>_<SETTING>, the value in code,
    its process-wide setting as set, its process-wide setting's default."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    levels: dict[str, int] = {}  # how close to the source each value was set (_LEVELS)
    for field, option in options(model):
        variable = f"SFN_{key}_{field.upper()}"
        if variable in env:
            values[field], sources[field] = env[variable], f"environment ({variable})"
            levels[field] = _LEVELS["per source"]
        elif field in registration.options:
            values[field], sources[field] = registration.options[field], CODE
            levels[field] = _LEVELS["code"]
        elif settings.explicit(option.setting):
            values[field] = getattr(settings, option.setting)
            sources[field] = settings.origin(option.setting)
            levels[field] = _LEVELS["process-wide"]
        else:
            values[field], sources[field] = getattr(settings, option.setting), DEFAULT
            levels[field] = _LEVELS["default"]
    label = f"{registration.kind} {name!r}"
    try:
        validated = model.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, label, values, sources)) from None
    pollers = validated.pollers
    if pollers > validated.concurrency:
        # A conflict only when pollers was set as close to the source as the concurrency
        # (or closer); a value set farther out is a default for many sources: capped here.
        if (
            levels["concurrency"] > _LEVELS["default"]
            and levels["pollers"] >= levels["concurrency"]
        ):
            raise SettingsError(
                f"{label}: pollers {pollers} ({_where(sources['pollers'])})"
                f" must not exceed concurrency {validated.concurrency} "
                f"({_where(sources['concurrency'])}): a poller only polls with a free slot"
            )
        pollers = validated.concurrency
        sources["pollers"] += f", capped at the concurrency ({validated.concurrency})"
    mode = validated.handler_mode
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
    fields = dict(validated) | {
        "name": name,
        "key": key,
        "handler": registration.handler,
        "pollers": pollers,
        "handler_mode": mode,
    }
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
            has = "have" if " and " in label else "has"  # two sources of one key (_add_key)
            raise SettingsError(
                f"{shown}: {label} {has} no setting {rest.removeprefix(f'{owner}_')!r} "
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
        _add_key(keys, activity_key(name), f"activity {name!r}", ACTIVITY_SUFFIXES)
    for url in queues:
        name = queue_name(url)
        _add_key(keys, activity_key(name), f"queue {name!r}", QUEUE_SUFFIXES)
    return keys


def _add_key(
    keys: dict[str, tuple[str, frozenset[str]]], key: str, label: str, suffixes: frozenset[str]
) -> None:
    """The single form's activity and queue may share a key (both named ``jobs``): the key
    then reads the settings of both (an app refuses that first, in _check_key)."""
    if key in keys:
        other, known = keys[key]
        label, suffixes = f"{other} and {label}", known | suffixes
    keys[key] = (label, suffixes)


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
