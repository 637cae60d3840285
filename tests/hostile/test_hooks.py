"""The app's hooks as user code gets them wrong: a lifespan that never finishes starting,
that ignores cancellation, that is slow while a stop comes, that hangs on exit. The real
command, a real signal; the fake counts what was polled."""

from __future__ import annotations

import asyncio
import signal

import pytest

from sfn_worker.testing import FakeStepFunctions

from ..bounds import BUSY_MACHINE_SLACK
from ..test_process import BIN, worker_process

GRACE = 3.0


def run(app: str) -> list[str]:
    return [str(BIN / "sfn-worker"), "run", app]


APP = {"SFN_ACTIVITY_ARN": "", "SFN_HANDLER": ""}  # the app names its activities


@pytest.mark.parametrize("app", ["tests.apps:never_yields", "tests.apps:stubborn_entry"])
async def test_a_lifespan_that_never_yields_ends_on_sigterm(
    fake: FakeStepFunctions, app: str
) -> None:
    """Entry is cancelled by the stop (and left behind if it ignores that): exit 1 within
    the grace, nothing polled. It used to ignore SIGTERM and a second signal alike."""
    async with worker_process(
        run(app), fake, SFN_SHUTDOWN_GRACE_SECONDS=str(GRACE), **APP
    ) as worker:
        await worker.wait_for_log("lifespan entering")
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        worker.signal_worker(signal.SIGTERM)
        assert await worker.exit_code(timeout=GRACE + 10) == 1
        took = loop.time() - signalled
    assert took < GRACE + BUSY_MACHINE_SLACK
    assert fake.counts.get("GetActivityTask", 0) == 0
    events = [e.get("event") for e in worker.events]
    assert "stopped while the app's lifespan was starting; nothing was polled" in events


async def test_sigterm_while_the_lifespan_is_starting_means_no_poll(
    fake: FakeStepFunctions,
) -> None:
    """A lifespan that takes 3 s to start: a stop meanwhile ends the start-up. It used to
    poll afterwards (tasks taken only to be failed) and leave 8 s after a 2 s grace."""
    async with worker_process(
        run("tests.apps:slow_start"), fake, SFN_SHUTDOWN_GRACE_SECONDS="2", **APP
    ) as worker:
        await worker.wait_for_log("lifespan entering")
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        worker.signal_worker(signal.SIGTERM)
        assert await worker.exit_code() == 1
        took = loop.time() - signalled
    assert took < 2 + BUSY_MACHINE_SLACK
    assert fake.counts.get("GetActivityTask", 0) == 0


async def test_a_lifespan_that_hangs_on_exit_is_bounded_by_the_grace(
    fake: FakeStepFunctions,
) -> None:
    """Every token answered, then the lifespan's exit hangs: the process still leaves
    within the grace, saying so. It used to stay until SIGKILL."""
    fake.add_activity("render")
    task = fake.add_task({}, activity="render")
    async with worker_process(
        run("tests.apps:hangs_on_exit"), fake, SFN_SHUTDOWN_GRACE_SECONDS=str(GRACE), **APP
    ) as worker:
        await fake.wait_for(lambda: task.state != "open", timeout=20)
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code(timeout=GRACE + 10) == 0
        took = loop.time() - signalled
    assert task.state == "succeeded"
    assert took < GRACE + BUSY_MACHINE_SLACK
    events = [e.get("event") for e in worker.events]
    assert "lifespan exiting" in events
    assert "the app's lifespan did not exit within the grace period; cancelling it" in events
