"""Every kind of task source, described once: its config class and the worker that serves
it. The process builds, probes and reports sources through this table; adding a kind is a
config class, a SourceWorker subclass and one line here."""

from __future__ import annotations

from ..config import ActivityConfig, CallbackQueueConfig, SourceConfig
from .source_worker import SourceWorker
from .sources.activity.worker import ActivityWorker
from .sources.once.worker import OnceConfig, OnceWorker
from .sources.queue.worker import CallbackQueueWorker

WORKERS: dict[type[SourceConfig], type[SourceWorker]] = {
    ActivityConfig: ActivityWorker,
    CallbackQueueConfig: CallbackQueueWorker,
    OnceConfig: OnceWorker,
}


def worker_class(config: SourceConfig) -> type[SourceWorker]:
    return WORKERS[type(config)]
