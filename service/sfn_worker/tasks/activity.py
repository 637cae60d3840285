"""An activity's worker: pollers long-poll GetActivityTask into the source's queue."""

from __future__ import annotations

from ..config import ActivityConfig
from ..metrics import SourceMetrics
from .poller import Poller
from .source import ActivitySource
from .source_worker import Intake, SourceParts, SourceWorker


class ActivityWorker(SourceWorker):
    def __init__(self, config: ActivityConfig, parts: SourceParts, metrics: SourceMetrics):
        assert config.arn is not None, "activity names are resolved before workers are built"
        self._arn = config.arn
        super().__init__(config, parts, metrics, ActivitySource(config.arn))

    def _make_intakes(self) -> list[Intake]:
        parts = self._parts
        return [
            Poller(
                number,
                client=parts.polls,
                activity_arn=self._arn,
                worker_name=parts.worker_name,
                slots=self._slots,
                ready=self._invoker.wait_ready,
                untraced=parts.tracing.untraced,
                queue=self._queue,
                stopping=parts.stopping,
                stop_requested=parts.stop_requested,
                on_fatal=parts.on_fatal,
                metrics=self.metrics,
                backoff=parts.poll_backoff,
            )
            for number in range(self.config.pollers)
        ]
