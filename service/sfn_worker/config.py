"""Each activity's effective settings, and where each value came from.

For every per-activity setting the first of these wins:
1. ``SFN_<KEY>_<SETTING>`` in the environment (KEY: the activity's name upper-cased, every
   other character ``_``), so operators override one activity without a code change;
2. the value given in code (``@app.activity(..., concurrency=4)``);
3. ``SFN_<SETTING>``, the default for every activity;
4. the built-in default.
The single-activity form (SFN_ACTIVITY_ARN + SFN_HANDLER) reads only 3 and 4, as before.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .app import App, Handler, is_async_handler
from .settings import (
    Concurrency,
    HandlerMode,
    HeartbeatMode,
    HeartbeatSeconds,
    MaxTasksPerChild,
    Pollers,
    QueueSize,
    Settings,
    SettingsError,
    check_activity_arn,
    env_name,
)

FIELDS = (
    "concurrency",
    "pollers",
    "queue_size",
    "heartbeat_seconds",
    "heartbeat_mode",
    "handler_mode",
    "max_tasks_per_child",
)
ARN_SUFFIX = "ACTIVITY_ARN"
SUFFIXES = frozenset({*(f.upper() for f in FIELDS), ARN_SUFFIX})
# Activity names: 1-80 characters, none of white space, brackets, wildcards or punctuation
# that Step Functions refuses.
NAME_PATTERN = r"[^\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f\x7f]{1,80}"
DEFAULT = "default"
CODE = "code"


class _Options(BaseModel):
    """Validates one activity's values with the same bounds as the SFN_* defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    concurrency: Concurrency
    pollers: Pollers
    queue_size: QueueSize
    heartbeat_seconds: HeartbeatSeconds
    heartbeat_mode: HeartbeatMode
    handler_mode: HandlerMode
    max_tasks_per_child: MaxTasksPerChild

    @field_validator("handler_mode", "heartbeat_mode", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


@dataclass(frozen=True)
class ActivityConfig:
    name: str
    key: str
    arn: str | None  # None: the name is turned into an ARN at start
    handler: Handler
    concurrency: int
    pollers: int
    queue_size: int
    heartbeat_seconds: float
    heartbeat_mode: HeartbeatMode
    handler_mode: HandlerMode
    max_tasks_per_child: int
    sources: Mapping[str, str]

    @property
    def effective_queue_size(self) -> int:
        return self.queue_size or self.pollers

    @property
    def heartbeat_rate_per_second(self) -> float:
        """Heartbeat calls per second when every slot holds a task."""
        return self.concurrency / self.heartbeat_seconds if self.heartbeat_seconds else 0.0

    def with_arn(self, arn: str) -> ActivityConfig:
        return dataclasses.replace(self, arn=arn)


def activity_key(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def activity_name(ref: str) -> str:
    return ref.rsplit(":", 1)[-1] if ref.startswith("arn:") else ref


def global_names() -> frozenset[str]:
    return frozenset(env_name(field) for field in Settings.model_fields)


def resolve(app: App, settings: Settings, environ: Mapping[str, str]) -> list[ActivityConfig]:
    """Every activity's settings; SettingsError with one line naming the variable otherwise."""
    single = app.single_form
    configs: list[ActivityConfig] = []
    keys: dict[str, str] = {}
    for registration in app.activities:
        name = activity_name(registration.ref)
        if registration.ref.startswith("arn:"):
            _check_arn(registration.ref, f"activity {registration.ref!r}")
        elif not re.fullmatch(NAME_PATTERN, name):
            raise SettingsError(f"activity {name!r}: not a valid activity name (1-80 characters)")
        key = activity_key(name)
        if not single:
            _check_key(name, key, keys)
        keys[key] = name
        env = {} if single else _activity_environment(key, environ)
        configs.append(_resolve_one(registration.ref, registration, name, key, settings, env))
    if not single:
        _check_unknown_variables(environ, keys)
    return configs


def _resolve_one(
    ref: str,
    registration: Any,
    name: str,
    key: str,
    settings: Settings,
    env: Mapping[str, str],
) -> ActivityConfig:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in FIELDS:
        variable = f"SFN_{key}_{field.upper()}"
        if variable in env:
            values[field], sources[field] = env[variable], f"environment ({variable})"
        elif field in registration.options:
            values[field], sources[field] = registration.options[field], CODE
        elif settings.explicit(field):
            values[field], sources[field] = (
                getattr(settings, field),
                f"environment ({env_name(field)})",
            )
        else:
            values[field], sources[field] = getattr(settings, field), DEFAULT
    try:
        options = _Options.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, name, values, sources)) from None
    pollers = options.pollers
    if pollers > options.concurrency:
        if sources["pollers"] != DEFAULT and sources["concurrency"] != DEFAULT:
            raise SettingsError(
                f"activity {name!r}: pollers {pollers} ({_where(sources['pollers'])}) must not "
                f"exceed concurrency {options.concurrency} ({_where(sources['concurrency'])}): "
                "a poller only polls with a free slot"
            )
        pollers = options.concurrency
        sources["pollers"] += f", capped at the concurrency ({options.concurrency})"
    mode = options.handler_mode
    if is_async_handler(registration.handler):
        mode, sources["handler_mode"] = HandlerMode.ASYNC, "the handler is async def"
    arn = env.get(f"SFN_{key}_{ARN_SUFFIX}") or (ref if ref.startswith("arn:") else None)
    sources["arn"] = (
        f"environment (SFN_{key}_{ARN_SUFFIX})"
        if f"SFN_{key}_{ARN_SUFFIX}" in env
        else (CODE if arn else "resolved from the name at start")
    )
    if arn is not None:
        _check_arn(arn, f"SFN_{key}_{ARN_SUFFIX}={arn!r}")
    return ActivityConfig(
        name=name,
        key=key,
        arn=arn,
        handler=registration.handler,
        concurrency=options.concurrency,
        pollers=pollers,
        queue_size=options.queue_size,
        heartbeat_seconds=options.heartbeat_seconds,
        heartbeat_mode=options.heartbeat_mode,
        handler_mode=mode,
        max_tasks_per_child=options.max_tasks_per_child,
        sources=sources,
    )


def _activity_environment(key: str, environ: Mapping[str, str]) -> dict[str, str]:
    # An empty variable counts as unset, as for the SFN_* settings (docker --env-file).
    return {
        f"SFN_{key}_{suffix}": environ[f"SFN_{key}_{suffix}"]
        for suffix in SUFFIXES
        if environ.get(f"SFN_{key}_{suffix}")
    }


def _check_key(name: str, key: str, keys: Mapping[str, str]) -> None:
    if key in keys:
        raise SettingsError(
            f"activities {keys[key]!r} and {name!r} would share the variables SFN_{key}_*; "
            "rename one"
        )
    for variable in sorted(global_names()):
        if variable == f"SFN_{key}" or variable.startswith(f"SFN_{key}_"):
            raise SettingsError(
                f"activity {name!r}: its variables SFN_{key}_* would collide with the setting "
                f"{variable}; rename the activity"
            )


def _check_unknown_variables(environ: Mapping[str, str], keys: Mapping[str, str]) -> None:
    """A per-activity variable must name a registered activity and a known setting."""
    known = global_names()
    for variable in sorted(environ):
        if not variable.startswith("SFN_") or variable in known:
            continue
        rest = variable.removeprefix("SFN_")
        owners = [k for k in keys if rest.startswith(f"{k}_")]
        if any(rest.removeprefix(f"{k}_") in SUFFIXES for k in owners):
            continue
        if owners:
            owner = max(owners, key=len)
            raise SettingsError(
                f"{variable}: activity {keys[owner]!r} has no setting "
                f"{rest.removeprefix(f'{owner}_')!r} (known: {', '.join(sorted(SUFFIXES))})"
            )
        if any(rest.endswith(f"_{suffix}") for suffix in SUFFIXES):
            raise SettingsError(
                f"{variable} matches no activity (activities: {', '.join(keys.values())})"
            )


def _check_arn(arn: str, what: str) -> None:
    try:
        check_activity_arn(arn)
    except ValueError as exc:
        raise SettingsError(f"{what} is invalid: {exc}") from None


def _where(source: str) -> str:
    return source.removeprefix("environment (").removesuffix(")") if "(" in source else source


def _describe(
    exc: ValidationError, name: str, values: Mapping[str, Any], sources: Mapping[str, str]
) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error.get("loc") else ""
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        source = sources.get(field, "")
        if source.startswith("environment ("):
            problems.append(f"{_where(source)}={values[field]!r} is invalid: {message}")
        else:
            problems.append(
                f"activity {name!r}: {field}={values[field]!r} ({source}) is invalid: {message}"
            )
    return "; ".join(problems)
