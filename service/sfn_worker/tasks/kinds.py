"""Every kind of task source, described once: its config class and the worker that serves
it. The process builds, probes, names and reports sources through this table, and asks the
worker class what differs (health, polls the grace must cover, ``needs_place``/``placed``);
adding a kind is a config class, a SourceWorker subclass and one line here (and one in
dev/kinds.py for ``sfn-worker dev`` to serve it)."""

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
