"""The worker's one settings object, read and validated from ``SFN_*`` environment variables."""

from __future__ import annotations

import re
import socket
from enum import StrEnum
from typing import Annotated, Self

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Step Functions allows at most 1,000 open GetActivityTask polls per activity ARN.
MAX_POLLERS_PER_ACTIVITY = 1000
WORKER_NAME_MAX = 80
# Sustained SendTaskHeartbeat rate above which an account's API quota is likely hit.
HEARTBEAT_RATE_WARNING_PER_SECOND = 200.0

ACTIVITY_ARN_PATTERN = r"^arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:activity:[^\s:]{1,80}$"
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


def check_queue_url(value: str) -> str:
    if not re.fullmatch(QUEUE_URL_PATTERN, value):
        raise ValueError(
            "expected an SQS queue URL like https://sqs.<region>.amazonaws.com/<account>/<name>"
        )
    return value


def check_activity_arn(value: str) -> str:
    if not re.fullmatch(ACTIVITY_ARN_PATTERN, value):
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


def _default_worker_name() -> str:
    return socket.gethostname()[:WORKER_NAME_MAX] or "sfn-worker"


# Per-activity settings: the SFN_* value is every activity's default; SFN_<KEY>_* and the
# activity's registration in code override it (config.py).
Pollers = Annotated[int, Field(ge=1, le=MAX_POLLERS_PER_ACTIVITY)]
Concurrency = Annotated[int, Field(ge=1, le=100_000)]
QueueSize = Annotated[int, Field(ge=0, le=100_000)]
HeartbeatSeconds = Annotated[float, Field(ge=0, le=86_400)]
MaxTasksPerChild = Annotated[int, Field(ge=0, le=1_000_000)]
# SQS allows 0-43,200 s. It is pushed out every third of it, so seconds are enough; a minute
# or more keeps the ChangeMessageVisibility calls rare.
VisibilitySeconds = Annotated[int, Field(ge=2, le=43_200)]
DEFAULT_POLLERS = 4


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

    # The single-activity form: one activity and its handler. An app (SFN_APP) replaces both.
    activity_arn: str | None = None
    handler: str = "sfn_worker.examples:seed_handler"
    app: str | None = None
    # The env-only callback queue (with SFN_HANDLER), and every queue's defaults.
    sqs_queue_url: str | None = None
    sqs_visibility_seconds: VisibilitySeconds = 60
    sqs_on_shutdown: OnShutdown = OnShutdown.RELEASE
    sqs_token_field: Annotated[str, Field(min_length=1)] = "TaskToken"
    sqs_input_field: Annotated[str, Field(min_length=1)] = "Input"
    pollers: Pollers = DEFAULT_POLLERS
    concurrency: Concurrency = 16
    queue_size: QueueSize = 0
    heartbeat_seconds: HeartbeatSeconds = 10.0
    heartbeat_mode: HeartbeatMode = HeartbeatMode.TIMER
    # Process mode: a handler process is replaced after this many tasks (0 = never).
    max_tasks_per_child: MaxTasksPerChild = 0
    shutdown_grace_seconds: Annotated[float, Field(ge=1, le=3_600)] = 25.0
    # How long a credentials provider that fails at start (the ECS agent's endpoint not ready
    # yet) is retried before the worker gives up (runtime/credentials.py).
    credentials_wait_seconds: Annotated[float, Field(ge=0, le=3_600)] = 60.0
    worker_name: Annotated[str, Field(min_length=1, max_length=WORKER_NAME_MAX)] = Field(
        default_factory=_default_worker_name
    )
    handler_mode: HandlerMode = HandlerMode.THREAD
    log_level: LogLevel = Field(
        default=LogLevel.INFO, validation_alias=AliasChoices("LOG_LEVEL", "SFN_LOG_LEVEL")
    )
    log_format: LogFormat = LogFormat.JSON
    # Optional HTTP server for /healthz and /metrics; 0 = off.
    http_port: Annotated[int, Field(ge=0, le=65_535)] = 0
    http_host: str = "0.0.0.0"
    # The task input's field holding W3C trace context (tracing with the otel extra).
    trace_context_key: Annotated[str, Field(min_length=1)] = "traceparent"
    metrics: MetricsOutput = MetricsOutput.PROMETHEUS
    metrics_interval_seconds: Annotated[float, Field(ge=1, le=3_600)] = 60.0
    metrics_namespace: Annotated[str, Field(min_length=1, max_length=255)] = "SfnActivityWorker"
    metrics_service_name: Annotated[str, Field(min_length=1, max_length=255)] = (
        "sfn-activity-worker"
    )
    # Protect the ECS task from scale-in while activity tasks are in flight.
    ecs_task_protection: bool = False
    ecs_protection_minutes: Annotated[int, Field(ge=1, le=2_880)] = 60

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "log_format", "handler_mode", "heartbeat_mode", "metrics", "sqs_on_shutdown", mode="before"
    )
    @classmethod
    def _lower_choice(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

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
        return value

    @model_validator(mode="after")
    def _pollers_within_concurrency(self) -> Self:
        # Only two values both set can conflict; a default poller count is capped instead.
        explicit = self.model_fields_set
        if "pollers" in explicit and "concurrency" in explicit and self.pollers > self.concurrency:
            raise ValueError(
                f"SFN_POLLERS ({self.pollers}) must not exceed SFN_CONCURRENCY ({self.concurrency})"
                ": a poller only polls with a free slot"
            )
        return self

    def explicit(self, field: str) -> bool:
        """Whether ``field`` was given (environment or constructor), not left at its default."""
        return field in self.model_fields_set


class SettingsError(Exception):
    """Settings could not be read; the message names the variable and is meant for operators."""


_ENV_NAMES = {
    "log_level": "LOG_LEVEL",
}


def env_name(field: str) -> str:
    return _ENV_NAMES.get(field.lower(), f"SFN_{field.upper()}")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise SettingsError with one readable message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc = error.get("loc", ())
        field = str(loc[0]) if loc else ""
        given = error.get("input")
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "missing":
            problems.append(f"{env_name(field)} is required but not set")
        elif not field:
            problems.append(message.removeprefix("Value error, "))
        else:
            shown = given if isinstance(given, str | int | float) else ""
            problems.append(
                f"{env_name(field)}={shown!r} is invalid: {message.removeprefix('Value error, ')}"
            )
    return "; ".join(problems)
