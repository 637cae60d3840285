"""Trace exporters are accessories: a collector that never answers, an exporter that is not
installed, output that would mix with the worker's own, never stop, slow or garble the
worker. Each case runs the real ``sfn-worker`` against the fake, the fault from outside."""

from __future__ import annotations

import pytest

from sfn_worker.testing import FakeStepFunctions

from ..test_operations import free_port
from ..test_process import BIN, worker_process


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("otel", "variable"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "console", "SFN_METRICS": "emf"}, "SFN_METRICS"),
    ],
    ids=["grpc-not-installed", "protocol-unknown", "zipkin-not-installed", "console-with-emf"],
)
async def test_an_exporter_that_cannot_run_is_refused_at_start(
    fake: FakeStepFunctions, otel: dict[str, str], variable: str
) -> None:
    fake.add_task({"in": "x"})
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        SFN_HANDLER_MODE="process",
        **otel,
    ) as worker:
        code = await worker.exit_code(timeout=30)
    assert code == 2
    assert len(worker.raw) == 1, worker.raw
    assert worker.raw[0].startswith("sfn-worker: configuration error:")
    assert variable in worker.raw[0]
    assert fake.counts.get("GetActivityTask", 0) == 0
