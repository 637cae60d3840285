"""``Worker``: the single-source form (SFN_ACTIVITY_ARN and/or SFN_SQS_QUEUE_URL, one
handler) on the runtime."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .app import App, Handler, load_handler
from .config import check_variables, source_keys
from .runtime.runtime import Runtime
from .settings import Settings, SettingsError

ACTIVITY_ARN_MISSING = (
    "SFN_ACTIVITY_ARN is required but not set (or SFN_SQS_QUEUE_URL for a callback queue, "
    "or run an app: sfn-worker run module:app)"
)
# There is no default handler: a real activity's tasks would be answered by the demo's.
HANDLER_MISSING = (
    "SFN_HANDLER is required but not set: the module:function that works each task, "
    "e.g. SFN_HANDLER=my_jobs:render_video (or --handler; the built-in demo handler: "
    "SFN_HANDLER=sfn_worker.examples:seed_handler)"
)


def single_app(
    settings: Settings, handler: Handler | None = None, environ: Mapping[str, str] | None = None
) -> App:
    """The app of the single-source form. Misspelt variables are named first (a misspelt
    SFN_ACTIVITY_ARN would otherwise read as a missing one), then what is missing; only
    then is the handler imported."""
    environ = os.environ if environ is None else environ
    activities = [settings.activity_arn] if settings.activity_arn is not None else []
    queues = [settings.sqs_queue_url] if settings.sqs_queue_url is not None else []
    check_variables(environ, source_keys(activities, queues))
    if not activities and not queues:
        raise SettingsError(ACTIVITY_ARN_MISSING)
    if handler is None:
        if settings.handler is None:
            raise SettingsError(HANDLER_MISSING)
        handler = load_handler(settings.handler, settings.name_of("handler"))
    return App.single(handler, activity_arn=settings.activity_arn, queue_url=settings.sqs_queue_url)


class Worker(Runtime):
    """The single-source form: SFN_ACTIVITY_ARN and/or SFN_SQS_QUEUE_URL, one handler
    (``handler``, else SFN_HANDLER, which is then required), settings from SFN_* alone."""

    def __init__(self, settings: Settings, handler: Handler | None = None, **kwargs: Any) -> None:
        app = single_app(settings, handler, kwargs.get("environ"))
        super().__init__(app, settings, **kwargs)
