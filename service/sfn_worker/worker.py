"""``Worker``: the single-source form (SFN_ACTIVITY_ARN and/or SFN_SQS_QUEUE_URL, one
handler) on the runtime."""

from __future__ import annotations

from typing import Any

from .app import App, Handler, load_handler
from .runtime.runtime import Runtime
from .settings import Settings, SettingsError

ACTIVITY_ARN_MISSING = (
    "SFN_ACTIVITY_ARN is required but not set (or SFN_SQS_QUEUE_URL for a callback queue, "
    "or run an app: sfn-worker run module:app)"
)


class Worker(Runtime):
    """The single-source form: SFN_ACTIVITY_ARN and/or SFN_SQS_QUEUE_URL, one handler
    (``handler``, default SFN_HANDLER), settings from SFN_* alone."""

    def __init__(self, settings: Settings, handler: Handler | None = None, **kwargs: Any) -> None:
        if settings.activity_arn is None and settings.sqs_queue_url is None:
            raise SettingsError(ACTIVITY_ARN_MISSING)
        handler = handler if handler is not None else load_handler(settings.handler)
        app = App.single(
            handler, activity_arn=settings.activity_arn, queue_url=settings.sqs_queue_url
        )
        super().__init__(app, settings, **kwargs)
