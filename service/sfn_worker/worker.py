"""``Worker``: the single-activity form, SFN_ACTIVITY_ARN and a handler, on the runtime."""

from __future__ import annotations

from typing import Any

from .app import App, Handler, load_handler
from .runtime.runtime import Runtime
from .settings import Settings, SettingsError

ACTIVITY_ARN_MISSING = (
    "SFN_ACTIVITY_ARN is required but not set (or run an app: sfn-worker run module:app)"
)


class Worker(Runtime):
    """One activity, its settings from SFN_* alone; ``handler`` defaults to SFN_HANDLER."""

    def __init__(self, settings: Settings, handler: Handler | None = None, **kwargs: Any) -> None:
        if settings.activity_arn is None:
            raise SettingsError(ACTIVITY_ARN_MISSING)
        handler = handler if handler is not None else load_handler(settings.handler)
        super().__init__(App.single(settings.activity_arn, handler), settings, **kwargs)
