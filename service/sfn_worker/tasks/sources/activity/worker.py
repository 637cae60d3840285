"""An activity's worker: pollers long-poll GetActivityTask into the source's queue."""

from __future__ import annotations

from typing import ClassVar, Self

from ....aws import SFNClient, SQSClient
from ....config import ActivityConfig, SourceConfig
from ....metrics import SourceMetrics
from ...intake import IntakeParts
from ...source_worker import Intake, Place, SourceParts, SourceWorker
from .poller import Poller
from .source import ActivitySource


class ActivityWorker(SourceWorker):
    # GetActivityTask holds a poll up to 60 s; a grace this long lets every open poll return.
    open_poll_seconds: ClassVar[float] = 65.0
    health_group: ClassVar[str | None] = "activities"

    def __init__(self, config: ActivityConfig, parts: SourceParts, metrics: SourceMetrics):
        assert config.arn is not None, "activity names are resolved before workers are built"
        super().__init__(config, parts, metrics, ActivitySource(config.arn))
        self._arn = config.arn

    @classmethod
    def serving(cls, config: SourceConfig, parts: SourceParts, metrics: SourceMetrics) -> Self:
        assert isinstance(config, ActivityConfig)
        return cls(config, parts, metrics)

    @classmethod
    async def probe(
        cls, config: SourceConfig, calls: SFNClient, sqs: SQSClient | None
    ) -> list[str]:
        await calls.describe_activity(activityArn=str(config.address))
        return []

    @classmethod
    def needs_place(cls, config: SourceConfig) -> bool:
        return isinstance(config, ActivityConfig) and config.arn is None

    @classmethod
    def placed(cls, config: SourceConfig, place: Place) -> SourceConfig:
        if not isinstance(config, ActivityConfig) or config.arn is not None:
            return config
        return config.with_arn(
            f"arn:{place.partition}:states:{place.region}:{place.account}:activity:{config.name}"
        )

    def _make_intakes(self, parts: IntakeParts) -> list[Intake]:
        return [
            Poller(
                number,
                parts,
                client=self._parts.clients.polls,
                activity_arn=self._arn,
                worker_name=self._parts.app.worker_name,
            )
            for number in range(self.config.pollers)
        ]
