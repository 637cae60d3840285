"""The worker's one settings object, read and validated from ``SFN_*`` environment variables."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Annotated, TypeVar

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .exceptions import SfnWorkerError

# Step Functions allows at most 1,000 open GetActivityTask polls per activity ARN.
MAX_POLLERS_PER_ACTIVITY = 1000
WORKER_NAME_MAX = 80
# Sustained SendTaskHeartbeat rate above which an account's API quota is likely hit.
HEARTBEAT_RATE_WARNING_PER_SECOND = 200.0

# Activity names as CreateActivity takes them: 1-80 characters, none of white space,
# brackets, wildcards, " # % \ ^ | ~ ` $ & , ; : / or control characters (U+0000-001F,
# U+007F-009F). Surrogates (a non-UTF-8 byte in the environment) are refused as well: such a
# name is no activity's and would fail later as ActivityDoesNotExist.
ACTIVITY_NAME_PATTERN = r"[^\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,80}"
ACTIVITY_NAME_RULE = (
    "1-80 characters, none of white space, control characters, < > { } [ ] ? * "
    '" # % \\ ^ | ~ ` $ & , ; : /'
)
ACTIVITY_ARN_PATTERN = r"arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:activity:" + ACTIVITY_NAME_PATTERN
# Names sent to AWS and printed in the settings table: no control characters, no surrogates.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
IMPORT_PATH_PATTERN = r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*"
# https://sqs.<region>.amazonaws.com/<account>/<name>, or an emulator's http://host:port/...
QUEUE_URL_PATTERN = r"^https?://[^/\s]+(/[^/\s]+)*/\d{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?$"


# CloudWatch namespaces, as aws-embedded-metrics checks them (validator.py, constants.py:
# letters, digits and . _ # : / -) and PutMetricData takes them (at most 255 characters,
# not starting with ':'; 'AWS/' is reserved for AWS services).
NAMESPACE_PATTERN = r"[A-Za-z0-9._#:/-]{1,255}"


def check_namespace(value: str) -> str:
    if not re.fullmatch(NAMESPACE_PATTERN, value):
        raise ValueError("expected 1-255 letters, digits or . _ # : / - (a CloudWatch namespace)")
    if value.startswith(("AWS/", ":")):
        raise ValueError("must not start with 'AWS/' (reserved for AWS services) or ':'")
    return value


def check_dimension_value(value: str) -> str:
    """A CloudWatch dimension value (API reference, Dimension): printable ASCII, not blank."""
    if not (value.isascii() and value.isprintable()):
        raise ValueError("expected printable ASCII (a CloudWatch dimension value)")
    if not value.strip():
        raise ValueError("must not be blank")
    return value


# A URL's user:password@. SQS authenticates by signature and never reads it; a queue URL
# is printed (settings, check) and logged, so one carrying it is refused, and masked.
USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def without_userinfo(text: str) -> str:
    return USERINFO.sub("***@", text)


def check_queue_url(value: str) -> str:
    if USERINFO.search(value):
        raise ValueError("must not carry user:password@ (SQS never reads it; it would be logged)")
    if not re.fullmatch(QUEUE_URL_PATTERN, value):
        raise ValueError(
            "expected an SQS queue URL like https://sqs.<region>.amazonaws.com/<account>/<name>"
        )
    return value


def check_activity_arn(value: str) -> str:
    if not re.fullmatch(ACTIVITY_ARN_PATTERN, value):
        if re.fullmatch(r"arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:activity:.*", value, re.S):
            raise ValueError(f"the activity name must be {ACTIVITY_NAME_RULE}")
        raise ValueError(
            "expected an activity ARN like arn:aws:states:<region>:<account>:activity:<name>"
        )
    return value


class HandlerMode(StrEnum):
    """Where a *sync* handler runs; async handlers always run on the event loop."""

    ASYNC = "async"
    THREAD = "thread"
    PROCESS = "process"


class HeartbeatMode(StrEnum):
    """``timer``: heartbeat every interval while the handler runs. ``progress``: only when the
    handler called ``ctx.heartbeat()`` since the last one, so a stuck handler lets its task
    time out (HeartbeatSeconds) and a Retry re-drives it."""

    TIMER = "timer"
    PROGRESS = "progress"


class MetricsOutput(StrEnum):
    """``prometheus``: /metrics on SFN_HTTP_PORT only. ``emf``: also CloudWatch embedded
    metric format records on stdout."""

    PROMETHEUS = "prometheus"
    EMF = "emf"


class OnShutdown(StrEnum):
    """Callback queues, at the end of the grace: ``release`` a message whose handler still
    runs (visibility 0: another worker takes it, its token is still valid) or ``fail`` its
    task with Worker.Shutdown, as for activities."""

    RELEASE = "release"
    FAIL = "fail"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


# LOG_LEVEL is a name other tools in a container set too, with their own spellings.
LOG_LEVEL_ALIASES = {"warn": LogLevel.WARNING, "trace": LogLevel.DEBUG, "fatal": LogLevel.CRITICAL}


E = TypeVar("E", bound=StrEnum)


def choice(kind: type[E], aliases: Mapping[str, E] | None = None) -> Callable[[object], object]:
    """A before-validator: any case of a value of ``kind`` (or of an alias). An unknown value
    is refused here, so the error quotes it as the user typed it and lists the valid ones."""
    names = {member.value.casefold(): member for member in kind} | dict(aliases or {})
    also = f", or {', '.join(aliases)}" if aliases else ""

    def parse(value: object) -> object:
        if not isinstance(value, str) or isinstance(value, kind):
            return value
        if (member := names.get(value.strip().casefold())) is not None:
            return member
        raise ValueError(f"expected one of {', '.join(m.value for m in kind)} (any case){also}")

    return parse


HandlerModeChoice = Annotated[HandlerMode, BeforeValidator(choice(HandlerMode))]
HeartbeatModeChoice = Annotated[HeartbeatMode, BeforeValidator(choice(HeartbeatMode))]
OnShutdownChoice = Annotated[OnShutdown, BeforeValidator(choice(OnShutdown))]
MetricsChoice = Annotated[MetricsOutput, BeforeValidator(choice(MetricsOutput))]
LogFormatChoice = Annotated[LogFormat, BeforeValidator(choice(LogFormat))]
LogLevelChoice = Annotated[LogLevel, BeforeValidator(choice(LogLevel, LOG_LEVEL_ALIASES))]


class UpperCaseEnvironment(EnvSettingsSource):
    """The environment, upper-case names only. pydantic-settings matches names ignoring
    case, so `sfn_concurrency=abc` was read as SFN_CONCURRENCY (and its error named that);
    names are upper-case, and config.check_variables refuses a lower-case SFN_ one."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            name.lower(): value
            for name, value in os.environ.items()
            if name == name.upper() and (value or not self.env_ignore_empty)
        }


def _default_worker_name() -> str:
    return socket.gethostname()[:WORKER_NAME_MAX] or "sfn-worker"


# Per-activity settings: the SFN_* value is every activity's default; SFN_<KEY>_* and the
# activity's registration in code override it (config.py).
Pollers = Annotated[int, Field(ge=1, le=MAX_POLLERS_PER_ACTIVITY)]
Concurrency = Annotated[int, Field(ge=1, le=100_000)]
QueueSize = Annotated[int, Field(ge=0, le=100_000)]
HeartbeatSeconds = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)]
MaxTasksPerChild = Annotated[int, Field(ge=0, le=1_000_000)]
# Process mode's handler processes; 0 = the CPUs the container may use (its cgroup quota).
Processes = Annotated[int, Field(ge=0, le=4_096)]
# SQS allows 0-43,200 s. It is pushed out every third of it, so seconds are enough; a minute
# or more keeps the ChangeMessageVisibility calls rare.
VisibilitySeconds = Annotated[int, Field(ge=2, le=43_200)]
# SFN_HTTP_PORT, as the worker and `sfn-worker healthcheck` both read it; 0 = off.
HttpPort = Annotated[int, Field(ge=0, le=65_535)]
# A message body's field name: white space around it (an env file keeps a trailing space)
# is dropped, as around every other value; it would make every message a poison one.
NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# The most open long polls per source: one per free slot up to it (so the default 16 slots
# poll 16 at once, and a burst they can take is picked up in one round trip). 31 workers
# at this cap stay under the service's 1,000 open polls per activity ARN.
DEFAULT_POLLERS = 32


class Settings(BaseSettings):
    """The process's settings, frozen after validation; one instance per process."""

    model_config = SettingsConfigDict(
        env_prefix="SFN_",
        frozen=True,
        extra="ignore",
        # `docker run --env-file` passes `NAME=` as an empty string: treat it as unset.
        env_ignore_empty=True,
        case_sensitive=False,
        use_enum_values=False,
        validate_default=True,
    )

    # The single-activity form: one activity and its handler (required: there is no sensible
    # default handler). An app (SFN_APP) replaces both.
    activity_arn: str | None = None
    handler: str | None = None
    app: str | None = None
    # The env-only callback queue (with SFN_HANDLER), and every queue's defaults.
    sqs_queue_url: str | None = None
    sqs_visibility_seconds: VisibilitySeconds = 60
    sqs_on_shutdown: OnShutdownChoice = OnShutdown.RELEASE
    sqs_token_field: NonBlank = "TaskToken"
    sqs_input_field: NonBlank = "Input"
    pollers: Pollers = DEFAULT_POLLERS
    concurrency: Concurrency = 16
    queue_size: QueueSize = 0
    heartbeat_seconds: HeartbeatSeconds = 10.0
    heartbeat_mode: HeartbeatModeChoice = HeartbeatMode.TIMER
    # Process mode: a handler process is replaced after this many tasks (0 = never).
    max_tasks_per_child: MaxTasksPerChild = 0
    # Process mode: at most this many handler processes (0 = one per CPU the container may
    # use); slots beyond them hold their tasks, heartbeated, until a process is free.
    processes: Processes = 0
    shutdown_grace_seconds: Annotated[float, Field(ge=1, le=3_600, allow_inf_nan=False)] = 25.0
    # How long a credentials provider that fails at start (the ECS agent's endpoint not ready
    # yet) is retried before the worker gives up (runtime/credentials.py).
    credentials_wait_seconds: Annotated[float, Field(ge=0, le=3_600, allow_inf_nan=False)] = 60.0
    worker_name: Annotated[str, Field(min_length=1, max_length=WORKER_NAME_MAX)] = Field(
        default_factory=_default_worker_name
    )
    handler_mode: HandlerModeChoice = HandlerMode.THREAD
    log_level: LogLevelChoice = Field(
        default=LogLevel.INFO, validation_alias=AliasChoices("LOG_LEVEL", "SFN_LOG_LEVEL")
    )
    log_format: LogFormatChoice = LogFormat.JSON
    # Optional HTTP server for /healthz and /metrics; 0 = off.
    http_port: HttpPort = 0
    http_host: str = "0.0.0.0"
    # The task input's field holding W3C trace context (tracing with the otel extra).
    trace_context_key: Annotated[str, Field(min_length=1)] = "traceparent"
    metrics: MetricsChoice = MetricsOutput.PROMETHEUS
    metrics_interval_seconds: Annotated[float, Field(ge=1, le=3_600, allow_inf_nan=False)] = 60.0
    metrics_namespace: Annotated[str, Field(min_length=1, max_length=255)] = "SfnActivityWorker"
    metrics_service_name: Annotated[str, Field(min_length=1, max_length=255)] = (
        "sfn-activity-worker"
    )
    # Protect the ECS task from scale-in while activity tasks are in flight.
    ecs_task_protection: bool = False
    ecs_protection_minutes: Annotated[int, Field(ge=1, le=2_880)] = 60

    @field_validator("activity_arn")
    @classmethod
    def _activity_arn_shape(cls, value: str | None) -> str | None:
        return None if value is None else check_activity_arn(value)

    @field_validator("sqs_queue_url")
    @classmethod
    def _queue_url_shape(cls, value: str | None) -> str | None:
        return None if value is None else check_queue_url(value)

    @field_validator("handler", "app")
    @classmethod
    def _import_path_shape(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(IMPORT_PATH_PATTERN, value):
            raise ValueError("expected 'package.module:attribute'")
        return value

    @field_validator("metrics_namespace")
    @classmethod
    def _namespace_shape(cls, value: str) -> str:
        return check_namespace(value)

    @field_validator("metrics_service_name")
    @classmethod
    def _service_name_shape(cls, value: str) -> str:
        return check_dimension_value(value)

    @field_validator("worker_name")
    @classmethod
    def _no_blank_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        if CONTROL_CHARACTERS.search(value):
            raise ValueError("must not contain control characters or bytes that are not UTF-8")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, UpperCaseEnvironment(settings_cls))

    # Fields given by a command-line flag (load_settings); the rest came from the
    # environment (or the constructor) or are defaults.
    _flags: frozenset[str] = PrivateAttr(default_factory=frozenset)

    def explicit(self, field: str) -> bool:
        """Whether ``field`` was given (flag, environment or constructor), not a default."""
        return field in self.model_fields_set

    def name_of(self, field: str) -> str:
        """What the user set ``field`` with: its flag, else its environment variable."""
        return flag_name(field) if field in self._flags else env_name(field)

    def origin(self, field: str) -> str:
        """Where ``field``'s value came from, for ``check`` and ``settings``."""
        if field in self._flags:
            return f"flag ({flag_name(field)})"
        if self.explicit(field):
            return f"environment ({_given_name(field, frozenset())})"
        return DEFAULT_ORIGIN


class SettingsError(SfnWorkerError):
    """Settings could not be read; the message names the variable and is meant for operators."""


DEFAULT_ORIGIN = "default"

# log_level is read from LOG_LEVEL (the name most tools share), or SFN_LOG_LEVEL.
_ENV_NAMES = {
    "log_level": "LOG_LEVEL",
}
ALIASES = {"SFN_LOG_LEVEL": "log_level"}

# The command line's flags (cli.py) and the settings they set: same validation, and a flag
# wins over its environment variable.
FLAGS = {
    "handler": "--handler",
    "concurrency": "--concurrency",
    "log_level": "--log-level",
    "log_format": "--log-format",
}


_FIELD_OF_ALIAS = {**{name: field for field, name in _ENV_NAMES.items()}, **ALIASES}


def flag_name(field: str) -> str:
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def env_name(field: str) -> str:
    return _ENV_NAMES.get(field.lower(), f"SFN_{field.upper()}")


def setting_names() -> frozenset[str]:
    """Every environment variable a process-wide setting is read from (aliases included)."""
    return frozenset({*(env_name(field) for field in Settings.model_fields), *ALIASES})


def load_settings(flags: Mapping[str, object] | None = None) -> Settings:
    """Read settings from the environment, with ``flags`` (field -> value as typed; None: not
    given) over it; raise SettingsError with one readable line naming the variable or flag."""
    given = {field: value for field, value in (flags or {}).items() if value is not None}
    _check_aliases_agree()
    try:
        settings = Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc, frozenset(given))) from None
    settings._flags = frozenset(given)
    _check_overridden_variables(given)
    _check_pollers_within_concurrency(settings)
    return settings


def _check_overridden_variables(given: Mapping[str, object]) -> None:
    """A variable a flag overrides is still validated: left invalid, it breaks the next
    start without the flag (or the next container that shares it)."""
    for field in given:
        names = [env_name(field), *(alias for alias, f in ALIASES.items() if f == field)]
        if not any(os.environ.get(name) for name in names):
            continue
        try:
            Settings(**{other: value for other, value in given.items() if other != field})  # type: ignore[arg-type]
        except ValidationError as exc:
            if problem := describe_validation_error(exc, frozenset(given) - {field}, only=field):
                raise SettingsError(f"{problem} (even with {flag_name(field)} given)") from None


def _check_aliases_agree() -> None:
    """Two names for one setting, both set, must say the same thing."""
    for alias, field in ALIASES.items():
        name = env_name(field)
        first, second = os.environ.get(name), os.environ.get(alias)
        if first and second and _same_level(first) != _same_level(second):
            raise SettingsError(
                f"{name}={first!r} and {alias}={second!r} are both set and differ; keep one"
            )


def _same_level(value: str) -> object:
    # The one aliased setting is LOG_LEVEL: `warn` and `WARNING` agree.
    text = value.strip().casefold()
    return LOG_LEVEL_ALIASES.get(text, text.upper())


def _check_pollers_within_concurrency(settings: Settings) -> None:
    # Only two values both set can conflict; a default poller count is capped instead.
    if (
        settings.explicit("pollers")
        and settings.explicit("concurrency")
        and settings.pollers > settings.concurrency
    ):
        raise SettingsError(
            f"{settings.name_of('pollers')} ({settings.pollers}) must not exceed "
            f"{settings.name_of('concurrency')} ({settings.concurrency})"
            ": a poller only polls with a free slot"
        )


def _given_name(field: str, flags: frozenset[str]) -> str:
    if field in flags:
        return flag_name(field)
    name = env_name(field)
    aliases = [alias for alias, target in ALIASES.items() if target == field]
    # The alias the user set, when the main name is not set.
    # An empty variable counts as unset (env_ignore_empty), here too.
    return next(
        (alias for alias in aliases if os.environ.get(alias) and not os.environ.get(name)), name
    )


def describe_validation_error(
    exc: ValidationError, flags: frozenset[str] = frozenset(), only: str | None = None
) -> str:
    """One line for ``exc``'s problems (only those of the field ``only``, if given)."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = error.get("loc", ())
        field = str(loc[0]) if loc else ""
        # An aliased field's errors are located at the alias, whoever gave the value.
        field = _FIELD_OF_ALIAS.get(field.upper(), field)
        if only is not None and field != only:
            continue
        given = error.get("input")
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "missing":
            problems.append(f"{env_name(field)} is required but not set")
        elif not field:
            problems.append(message.removeprefix("Value error, "))
        else:
            shown = given if isinstance(given, str | int | float) else ""
            shown = without_userinfo(shown) if isinstance(shown, str) else shown
            problems.append(
                f"{_given_name(field, flags)}={shown!r} is invalid: "
                f"{message.removeprefix('Value error, ')}"
            )
    return "; ".join(problems)
