"""AWS Step Functions activity worker: pollers, bounded queue, heartbeats, graceful shutdown;
several activities in one process with a lifespan and middleware (``App``).

The names below load on first use: importing the package itself loads nothing heavy, so the
``sfn-worker`` command catches signals from its first instruction (entry.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import App, non_blocking
    from .context import TaskContext
    from .errors import SHUTDOWN_ERROR
    from .exceptions import (
        FatalWorkerError,
        LifespanFailed,
        SfnWorkerError,
        TaskFailed,
        WorkerCrashed,
    )
    from .settings import Settings, SettingsError, load_settings
    from .worker import Worker

    __version__: str

_EXPORTS = {
    "App": ".app",
    "non_blocking": ".app",
    "TaskContext": ".context",
    "SHUTDOWN_ERROR": ".errors",
    "SfnWorkerError": ".exceptions",
    "FatalWorkerError": ".exceptions",
    "LifespanFailed": ".exceptions",
    "TaskFailed": ".exceptions",
    "WorkerCrashed": ".exceptions",
    "Settings": ".settings",
    "SettingsError": ".settings",
    "load_settings": ".settings",
    "Worker": ".worker",
}

__all__ = [
    "SHUTDOWN_ERROR",
    "App",
    "FatalWorkerError",
    "LifespanFailed",
    "Settings",
    "SettingsError",
    "SfnWorkerError",
    "TaskContext",
    "TaskFailed",
    "Worker",
    "WorkerCrashed",
    "__version__",
    "load_settings",
    "non_blocking",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: Any = version("sfn-activity-worker")
        except PackageNotFoundError:  # running from a source tree
            value = "0+unknown"
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
