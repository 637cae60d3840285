"""AWS Step Functions activity worker: pollers, bounded queue, heartbeats, graceful shutdown;
several activities in one process with a lifespan and middleware (``App``)."""

from importlib.metadata import PackageNotFoundError, version

from .app import App, non_blocking
from .context import TaskContext
from .errors import SHUTDOWN_ERROR, FatalWorkerError, TaskFailed
from .settings import Settings, load_settings
from .worker import Worker

try:
    __version__ = version("sfn-activity-worker")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "SHUTDOWN_ERROR",
    "App",
    "FatalWorkerError",
    "Settings",
    "TaskContext",
    "TaskFailed",
    "Worker",
    "__version__",
    "load_settings",
    "non_blocking",
]
