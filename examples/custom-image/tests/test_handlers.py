"""The example team's handler tests: no AWS, no asyncio settings, the worker's own answer
rules (the worker's pytest plugin runs the `async def` tests and gives `sfn_fake`)."""

from __future__ import annotations

from media_jobs.handlers import describe_file
from sfn_worker import App
from sfn_worker.testing import (
    Failure,
    FakeStepFunctions,
    Success,
    run_app,
    run_handler,
    run_handler_sync,
)


async def test_describes_a_file() -> None:
    outcome = await run_handler(describe_file, {"name": "a.mp4", "bytes": 3 * 1024 * 1024})
    assert outcome == Success('{"name":"a.mp4","size":"3.0 MiB"}')


async def test_bad_input_is_a_named_failure() -> None:
    outcome = await run_handler(describe_file, {"name": "a.mp4"})
    assert isinstance(outcome, Failure)
    assert outcome.error == "Media.BadInput"


def test_a_plain_test_can_run_the_handler_too() -> None:
    outcome = run_handler_sync(describe_file, {"name": "b.wav", "bytes": 512})
    assert outcome == Success('{"name":"b.wav","size":"512 Bytes"}')


async def test_the_worker_serves_it_as_an_activity(sfn_fake: FakeStepFunctions) -> None:
    """What the image does with SFN_HANDLER, in this process against a fake Step Functions."""
    app = App()
    app.activity(sfn_fake.activity_arn)(describe_file)
    task = sfn_fake.add_task({"name": "clip.mp4", "bytes": 5 * 1024 * 1024})
    async with run_app(app, sfn_fake):
        await sfn_fake.wait_for(lambda: task.state != "open")
    assert (task.state, task.output) == ("succeeded", '{"name":"clip.mp4","size":"5.0 MiB"}')
