"""Prometheus metrics, one registry per worker so tests and embedders never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.last_loop_lag = 0.0  # seconds; also exported as sfn_worker_event_loop_lag_seconds
        r = self.registry
        self.tasks_started = Counter(
            "sfn_worker_tasks_started", "Tasks taken and started", registry=r
        )
        self.tasks_succeeded = Counter(
            "sfn_worker_tasks_succeeded", "Tasks answered with SendTaskSuccess", registry=r
        )
        self.tasks_failed = Counter(
            "sfn_worker_tasks_failed", "Tasks answered with SendTaskFailure", ["error"], registry=r
        )
        self.tasks_gone = Counter(
            "sfn_worker_tasks_gone",
            "Tasks closed by Step Functions before the worker answered (timed out, stopped)",
            registry=r,
        )
        self.tasks_in_flight = Gauge("sfn_worker_tasks_in_flight", "Tasks being worked", registry=r)
        self.queue_depth = Gauge(
            "sfn_worker_queue_depth", "Tasks taken but not started", registry=r
        )
        self.polls_open = Gauge(
            "sfn_worker_polls_open", "GetActivityTask calls in flight", registry=r
        )
        self.empty_polls = Counter(
            "sfn_worker_empty_polls", "Long polls that returned no task", registry=r
        )
        self.poll_errors = Counter(
            "sfn_worker_poll_errors", "GetActivityTask errors", ["code"], registry=r
        )
        self.heartbeats_sent = Counter(
            "sfn_worker_heartbeats_sent", "Heartbeats accepted", registry=r
        )
        self.heartbeats_failed = Counter(
            "sfn_worker_heartbeats_failed", "Heartbeat calls that failed", ["code"], registry=r
        )
        self.heartbeat_lag = Histogram(
            "sfn_worker_heartbeat_lag_seconds",
            "How much later than planned a heartbeat was accepted",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.handler_duration = Histogram(
            "sfn_worker_handler_duration_seconds",
            "Time from task start to its outcome",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400),
            registry=r,
        )
        self.loop_lag = Gauge(
            "sfn_worker_event_loop_lag_seconds", "How late the last loop timer fired", registry=r
        )
        self.handlers_stuck = Gauge(
            "sfn_worker_handlers_stuck",
            "Handlers still running after their task ended (they ignored cancellation); "
            "each holds its slot until it returns",
            registry=r,
        )
        self.handler_process_deaths = Counter(
            "sfn_worker_handler_process_deaths",
            "Handler processes that died on their own (process mode)",
            registry=r,
        )
        self.terminal_retries = Counter(
            "sfn_worker_terminal_call_retries",
            "Retried SendTaskSuccess/Failure attempts",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
