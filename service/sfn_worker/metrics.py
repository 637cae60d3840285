"""Prometheus metrics: one registry per process (so tests and embedders never collide). Every
per-source series has two labels: ``source``, the source's name (the activity's name, or the
callback queue's), and ``kind``, ``activity`` or ``queue``; ``for_source`` binds them once.

Each metric is declared once, here. Other outputs (EMF, runtime/emf.py) read a source's
values through ``SourceMetrics.totals``, never a sample by its name: a renamed metric is a
type error there, not a series that silently reads 0."""

from __future__ import annotations

import random
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SOURCE_LABELS = ("source", "kind")
A = list(SOURCE_LABELS)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.last_loop_lag = 0.0  # seconds; also exported as sfn_worker_event_loop_lag_seconds
        self._sources: dict[tuple[str, str], SourceMetrics] = {}
        r = self.registry
        self.tasks_started = Counter(
            "sfn_worker_tasks_started", "Tasks taken and started", A, registry=r
        )
        self.tasks_succeeded = Counter(
            "sfn_worker_tasks_succeeded", "Tasks answered with SendTaskSuccess", A, registry=r
        )
        self.tasks_failed = Counter(
            "sfn_worker_tasks_failed",
            "Tasks answered with SendTaskFailure",
            [*A, "error"],
            registry=r,
        )
        self.tasks_gone = Counter(
            "sfn_worker_tasks_gone",
            "Tasks closed by Step Functions before the worker answered (timed out, stopped)",
            A,
            registry=r,
        )
        self.tasks_released = Counter(
            "sfn_worker_tasks_released",
            "Callback tasks handed back unanswered (message visible again) at shutdown",
            A,
            registry=r,
        )
        self.tasks_unanswered = Counter(
            "sfn_worker_tasks_unanswered",
            "Tokens left unanswered when the shutdown's grace ran out (they wait for the "
            "state's timeout)",
            A,
            registry=r,
        )
        self.poison_messages = Counter(
            "sfn_worker_poison_messages",
            "Messages left for the redrive policy: not JSON, no token, or a malformed token",
            [*A, "reason"],
            registry=r,
        )
        self.tasks_in_flight = Gauge(
            "sfn_worker_tasks_in_flight", "Tasks being worked", A, registry=r
        )
        self.concurrency = Gauge(
            "sfn_worker_concurrency", "Slots: tasks the activity may work at once", A, registry=r
        )
        self.queue_depth = Gauge(
            "sfn_worker_queue_depth", "Tasks taken but not started", A, registry=r
        )
        self.polls_open = Gauge(
            "sfn_worker_polls_open", "GetActivityTask calls in flight", A, registry=r
        )
        self.empty_polls = Counter(
            "sfn_worker_empty_polls", "Long polls that returned no task", A, registry=r
        )
        self.poll_errors = Counter(
            "sfn_worker_poll_errors", "GetActivityTask errors", [*A, "code"], registry=r
        )
        self.heartbeats_sent = Counter(
            "sfn_worker_heartbeats_sent", "Heartbeats accepted", A, registry=r
        )
        self.heartbeats_failed = Counter(
            "sfn_worker_heartbeats_failed", "Heartbeat calls that failed", [*A, "code"], registry=r
        )
        self.heartbeat_lag = Histogram(
            "sfn_worker_heartbeat_lag_seconds",
            "How much later than planned a heartbeat was accepted",
            A,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.tasks_stalled = Counter(
            "sfn_worker_tasks_stalled",
            "Tasks whose handler reported no progress for a heartbeat interval (progress mode)",
            A,
            registry=r,
        )
        self.handler_duration = Histogram(
            "sfn_worker_handler_duration_seconds",
            "Time from task start to its outcome",
            A,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400),
            registry=r,
        )
        self.handlers_stuck = Gauge(
            "sfn_worker_handlers_stuck",
            "Handlers still running after their task ended (they ignored cancellation); "
            "each holds its slot until it returns",
            A,
            registry=r,
        )
        self.handler_process_deaths = Counter(
            "sfn_worker_handler_process_deaths",
            "Handler processes that died on their own (process mode)",
            A,
            registry=r,
        )
        self.terminal_retries = Counter(
            "sfn_worker_terminal_call_retries",
            "Retried SendTaskSuccess/Failure attempts",
            A,
            registry=r,
        )
        self.kms_fallbacks = Counter(
            "sfn_worker_kms_fallback_answers",
            "Answers KMS refused, sent instead as SendTaskFailure without error or cause",
            A,
            registry=r,
        )
        self.accessory_failures = Counter(
            "sfn_worker_accessory_failures",
            "Failures of parts beside the task path (metrics output, tracing, task "
            "protection, ...); they never stop the worker",
            ["accessory"],
            registry=r,
        )
        self.accessory_dropped = Counter(
            "sfn_worker_accessory_dropped",
            "Records an accessory dropped so as not to block the event loop (a full output)",
            ["accessory"],
            registry=r,
        )
        self.answer_rate = Gauge(
            "sfn_worker_answer_rate",
            "Terminal calls the worker gets answered per second, as measured (sizes the "
            "shutdown's failure reserve)",
            registry=r,
        )
        self.loop_lag = Gauge(
            "sfn_worker_event_loop_lag_seconds", "How late the last loop timer fired", registry=r
        )

    def for_source(self, name: str, kind: str) -> SourceMetrics:
        """The source's bound series (one object per source, shared by its readers);
        ``kind`` is ``activity`` or ``queue``."""
        labels = (name, kind)
        if labels not in self._sources:
            self._sources[labels] = SourceMetrics(self, labels)
        return self._sources[labels]

    def render(self) -> bytes:
        return generate_latest(self.registry)


# Heartbeat lags kept per activity between two EMF records (for their p99); beyond this
# many in one interval, later ones replace random earlier ones (reservoir sampling).
LAG_SAMPLE_SIZE = 2_000


class SourceMetrics:
    """The series of one source, its labels bound once (no label lookup per task)."""

    def __init__(self, metrics: Metrics, labels: tuple[str, str]) -> None:
        self.labels = labels  # (source, kind)
        self._metrics = metrics
        self._lags: list[float] = []
        self._lags_seen = 0
        self.tasks_started = metrics.tasks_started.labels(*labels)
        self.tasks_succeeded = metrics.tasks_succeeded.labels(*labels)
        self.tasks_gone = metrics.tasks_gone.labels(*labels)
        self.tasks_in_flight = metrics.tasks_in_flight.labels(*labels)
        self.concurrency = metrics.concurrency.labels(*labels)
        self.queue_depth = metrics.queue_depth.labels(*labels)
        self.polls_open = metrics.polls_open.labels(*labels)
        self.empty_polls = metrics.empty_polls.labels(*labels)
        self.heartbeats_sent = metrics.heartbeats_sent.labels(*labels)
        self.heartbeat_lag = metrics.heartbeat_lag.labels(*labels)
        self.tasks_stalled = metrics.tasks_stalled.labels(*labels)
        self.handler_duration = metrics.handler_duration.labels(*labels)
        self.handlers_stuck = metrics.handlers_stuck.labels(*labels)
        self.handler_process_deaths = metrics.handler_process_deaths.labels(*labels)
        self.terminal_retries = metrics.terminal_retries.labels(*labels)
        self.tasks_released = metrics.tasks_released.labels(*labels)
        self.tasks_unanswered = metrics.tasks_unanswered.labels(*labels)
        self.kms_fallbacks = metrics.kms_fallbacks.labels(*labels)

    def task_failed(self, error: str) -> None:
        self._metrics.tasks_failed.labels(*self.labels, error).inc()

    def poll_error(self, code: str) -> None:
        self._metrics.poll_errors.labels(*self.labels, code).inc()

    def heartbeat_failed(self, code: str) -> None:
        self._metrics.heartbeats_failed.labels(*self.labels, code).inc()

    def poison_message(self, reason: str) -> None:
        self._metrics.poison_messages.labels(*self.labels, reason).inc()

    def observe_heartbeat_lag(self, seconds: float) -> None:
        self.heartbeat_lag.observe(seconds)
        self._lags_seen += 1
        if len(self._lags) < LAG_SAMPLE_SIZE:
            self._lags.append(seconds)
        elif (slot := random.randrange(self._lags_seen)) < LAG_SAMPLE_SIZE:
            self._lags[slot] = seconds

    def totals(self) -> SourceTotals:
        """The source's counters since start, read from the declared metrics."""
        return SourceTotals(
            tasks_started=_value(self.tasks_started),
            tasks_succeeded=_value(self.tasks_succeeded),
            tasks_gone=_value(self.tasks_gone),
            tasks_stalled=_value(self.tasks_stalled),
            tasks_released=_value(self.tasks_released),
            handler_process_deaths=_value(self.handler_process_deaths),
            tasks_failed=self._by_label(self._metrics.tasks_failed, "error"),
            poll_errors=self._by_label(self._metrics.poll_errors, "code"),
        )

    def _by_label(self, counter: Counter, label: str) -> dict[str, float]:
        """This source's totals of ``counter``, by its other label."""
        source = dict(zip(SOURCE_LABELS, self.labels, strict=True))
        return {
            sample.labels[label]: sample.value
            for family in counter.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
            and all(sample.labels.get(k) == v for k, v in source.items())
        }

    def take_heartbeat_lags(self) -> list[float]:
        """The lags observed since the last call (a sample when there were many)."""
        lags, self._lags, self._lags_seen = self._lags, [], 0
        return lags


@dataclass(frozen=True)
class SourceTotals:
    """A source's counter totals since start (outputs that report per interval take the
    difference between two of these)."""

    tasks_started: float
    tasks_succeeded: float
    tasks_gone: float
    tasks_stalled: float
    tasks_released: float
    handler_process_deaths: float
    tasks_failed: dict[str, float]  # by error name
    poll_errors: dict[str, float]  # by error code


def _value(counter: Counter) -> float:
    """A bound counter's total (``collect`` is the public way to read it)."""
    return next(
        sample.value
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )
