"""The example team's handler tests: no AWS, the worker's own answer rules."""

from __future__ import annotations

from media_jobs.handlers import describe_file
from sfn_worker.testing import Failure, Success, run_handler


async def test_describes_a_file() -> None:
    outcome = await run_handler(describe_file, {"name": "a.mp4", "bytes": 3 * 1024 * 1024})
    assert outcome == Success('{"name":"a.mp4","size":"3.0 MiB"}')


async def test_bad_input_is_a_named_failure() -> None:
    outcome = await run_handler(describe_file, {"name": "a.mp4"})
    assert isinstance(outcome, Failure)
    assert outcome.error == "Media.BadInput"
