"""CloudWatch metrics without a scraper (SFN_METRICS=emf): embedded metric format on stdout.

Every SFN_METRICS_INTERVAL_SECONDS, and once more at shutdown, the worker writes JSON
records to **stdout**; its log lines go to **stderr**. With the awslogs driver (or any
collector of the container's output into CloudWatch Logs) CloudWatch extracts the records
into metrics of SFN_METRICS_NAMESPACE, no agent needed:

- per source (an activity or a callback queue), dimensions ServiceName + Source (its name)
  + Kind (``activity`` or ``queue``): TasksStarted, TasksSucceeded, TasksFailed, TasksGone,
  TasksStalled, TasksReleased, HandlerProcessDeaths, PollErrors (counts in the interval);
  TasksInFlight, Concurrency, QueueDepth, HandlersStuck (at the end of it); SlotsBusy
  (TasksInFlight / Concurrency, percent: the scaling signal); HeartbeatLagP99 (seconds,
  when heartbeats ran);
- per source and failure, the same dimensions + Error: TasksFailed;
- per process, dimension ServiceName: EventLoopLag (seconds).

Records are built and serialized by aws-embedded-metrics (MetricsContext, LogSerializer:
the format, its limits, the chunking); its async ``flush`` is not used because it resolves
the "environment" by probing the network (EC2 metadata, a CloudWatch agent socket), while
the worker knows where it writes.

Records leave through an ``OutputStream`` (streams.py): a stdout nobody reads never blocks
the loop (a full buffer drops an interval's records, counted by the ``emf`` accessory), and
a broken stdout stops the metrics, said once, never the worker. Dimension values come from
users (error names, source names) and are made valid first (``dimension_value``); the
namespace and ServiceName are checked at start (settings.py).
"""

from __future__ import annotations

import asyncio
import math
import unicodedata
from collections.abc import Callable, Sequence
from typing import Protocol

from aws_embedded_metrics.logger.metrics_context import MetricsContext
from aws_embedded_metrics.serializers.log_serializer import LogSerializer

from ..metrics import Metrics, SourceTotals
from ..tasks.source_worker import SourceWorker

# CloudWatch's Dimension (API reference): a value is 1-1024 ASCII characters, no control
# characters, at least one that is not whitespace; aws-embedded-metrics raises
# InvalidDimensionError on all but the control characters (validator.py).
MAX_DIMENSION_VALUE = 1024
BLANK_DIMENSION = "(blank)"

# The counts of a source's record, each read from its declared counter (metrics.py); a
# record gives the difference since the previous one.
COUNTS: dict[str, Callable[[SourceTotals], float]] = {
    "TasksStarted": lambda t: t.tasks_started,
    "TasksSucceeded": lambda t: t.tasks_succeeded,
    "TasksGone": lambda t: t.tasks_gone,
    "TasksStalled": lambda t: t.tasks_stalled,
    "TasksReleased": lambda t: t.tasks_released,
    "HandlerProcessDeaths": lambda t: t.handler_process_deaths,
}
# A source's dimensions beside ServiceName: its name and its kind (activity | queue), the
# ``source`` and ``kind`` labels of /metrics. The kind tells an activity and a callback queue
# of the same name apart.
SOURCE_DIMENSION, KIND_DIMENSION = "Source", "Kind"


class Output(Protocol):
    """Where records go: ``streams.OutputStream`` (a write never blocks; False: dropped or
    broken, and ``error`` says which)."""

    error: OSError | None

    def write(self, data: bytes, records: int = 1) -> bool: ...


class EmfPublisher:
    def __init__(
        self,
        metrics: Metrics,
        sources: Callable[[], Sequence[SourceWorker]],
        *,
        namespace: str,
        service_name: str,
        output: Output,
    ) -> None:
        self._metrics = metrics
        self._sources = sources
        self._namespace = namespace
        self._service = service_name
        self._output = output
        self._previous: dict[tuple[str, ...], float] = {}

    async def run(self, interval: float) -> None:
        """Publish every ``interval`` seconds until cancelled (then once more), or until
        the output breaks (its stream reports that)."""
        try:
            while self._output.error is None:
                await asyncio.sleep(interval)
                self.publish()
        finally:
            if self._output.error is None:
                self.publish()  # the last interval, also when the container stops

    def publish(self) -> None:
        """One interval's records, handed to the output in one piece (never blocks)."""
        lines: list[str] = []
        for source in self._sources():
            lines += self._source_records(source)
        process = self._context({"ServiceName": self._service})
        process.put_metric("EventLoopLag", self._metrics.last_loop_lag, "Seconds")
        lines += LogSerializer.serialize(process)
        # json.dumps escapes what is not ASCII: the records are ASCII.
        self._output.write("".join(f"{line}\n" for line in lines).encode(), len(lines))

    def _source_records(self, source: SourceWorker) -> list[str]:
        name, kind = source.name, source.source.kind
        dimensions = {"ServiceName": self._service, SOURCE_DIMENSION: name, KIND_DIMENSION: kind}
        record = self._context(dimensions)
        totals = source.metrics.totals()
        for metric, read in COUNTS.items():
            record.put_metric(metric, self._delta((kind, name, metric), read(totals)), "Count")
        # Error names that differ only where CloudWatch cannot show it share one record.
        per_value: dict[str, float] = {}
        for error, total in totals.tasks_failed.items():
            delta = self._delta((kind, name, "TasksFailed", error), total)
            value = dimension_value(error)
            per_value[value] = per_value.get(value, 0.0) + delta
        lines = []
        for value, delta in per_value.items():
            if delta:
                by_error = self._context({**dimensions, "Error": value})
                by_error.put_metric("TasksFailed", delta, "Count")
                lines += LogSerializer.serialize(by_error)
        record.put_metric("TasksFailed", sum(per_value.values()), "Count")
        polls = totals.poll_errors
        record.put_metric(
            "PollErrors",
            sum(self._delta((kind, name, "PollErrors", code), n) for code, n in polls.items()),
            "Count",
        )
        state = source.state()
        record.put_metric("TasksInFlight", state.running, "Count")
        record.put_metric("Concurrency", state.concurrency, "Count")
        record.put_metric("QueueDepth", state.queued, "Count")
        record.put_metric("HandlersStuck", state.handlers_stuck, "Count")
        record.put_metric("SlotsBusy", 100.0 * state.running / state.concurrency, "Percent")
        if lags := source.metrics.take_heartbeat_lags():
            record.put_metric("HeartbeatLagP99", percentile(lags, 99), "Seconds")
        return [*LogSerializer.serialize(record), *lines]

    def _context(self, dimensions: dict[str, str]) -> MetricsContext:
        context = MetricsContext.empty()  # stamped now
        context.namespace = self._namespace
        context.set_dimensions([{k: dimension_value(v) for k, v in dimensions.items()}])
        return context

    def _delta(self, key: tuple[str, ...], total: float) -> float:
        previous, self._previous[key] = self._previous.get(key, 0.0), total
        return max(0.0, total - previous)


def dimension_value(text: str) -> str:
    """``text`` as a valid dimension value: accents dropped (``Échec`` → ``Echec``), other
    characters that are not printable ASCII as ``?``, blank as ``(blank)``, at most 1,024
    characters. A valid value is returned as it is."""
    if text.isascii() and text.isprintable() and text.strip():
        return text[:MAX_DIMENSION_VALUE]
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(
        c if c.isascii() and c.isprintable() else "?"
        for c in decomposed
        if not unicodedata.combining(c)
    )
    return (kept if kept.strip() else BLANK_DIMENSION)[:MAX_DIMENSION_VALUE]


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
