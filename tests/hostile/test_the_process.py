"""The process's own boundaries: signals from the first instruction to the last, every
signal a supervisor or a terminal may send, and PID 1's duty to reap orphans."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sfn_worker import SHUTDOWN_ERROR
from sfn_worker.testing import FakeStepFunctions

from ..bounds import BUSY_MACHINE_SLACK
from ..test_process import BIN, needs_pid_namespace, unshare, worker_process

RUN = [str(BIN / "sfn-worker"), "run"]
IN_A_PID_NAMESPACE = [str(unshare), "--pid", "--fork", "--mount-proc", *RUN]


def test_importing_the_command_loads_nothing_heavy() -> None:
    """What runs before the first signal handler: the package and entry.py only."""
    probe = (
        "import sfn_worker.entry, sys; "
        "print(sorted({'botocore', 'aiohttp', 'pydantic'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("as_pid_1", [False, pytest.param(True, marks=needs_pid_namespace)])
async def test_a_signal_while_the_worker_starts_is_honoured(
    fake: FakeStepFunctions, as_pid_1: bool
) -> None:
    """SIGTERM while the handler module is still importing: recorded, then honoured once
    the runtime exists: no poll, exit 0, the signal logged. It used to kill the worker with
    no line, or, as PID 1, be dropped: the worker took tasks, lost to the SIGKILL after."""
    task = fake.add_task({"in": "SUCCESS"})
    command = IN_A_PID_NAMESPACE if as_pid_1 else RUN
    async with worker_process(
        command, fake, SFN_HANDLER="tests.slow_import:handler", SFN_SHUTDOWN_GRACE_SECONDS="2"
    ) as worker:
        await worker.wait_for_log("slow import started")
        worker.signal_worker(signal.SIGTERM)
        assert await worker.exit_code() == 0
    assert fake.counts.get("GetActivityTask", 0) == 0
    assert not task.issued
    events = [e.get("event") for e in worker.events]
    assert "signal received: shutting down" in events
    assert "stopped before polling began" in events


async def test_every_signal_a_supervisor_sends_has_a_decided_effect(
    fake: FakeStepFunctions,
) -> None:
    """SIGUSR1 reports, SIGUSR2 is ignored, SIGHUP stops in order (as SIGTERM): each of
    them used to end the worker at once with its tokens unanswered."""
    task = fake.add_task({"seconds": 300})
    async with worker_process(
        RUN,
        fake,
        SFN_HANDLER="sfn_worker.examples:sleep_handler",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="2",
    ) as worker:
        await worker.wait_for_log("task started")
        worker.signal_worker(signal.SIGUSR1)
        report = await worker.wait_for_log("state report")
        worker.signal_worker(signal.SIGUSR2)
        await worker.wait_for_log("signal ignored")
        assert worker.process.returncode is None
        worker.signal_worker(signal.SIGHUP)
        fake.release_polls()
        assert await worker.exit_code() == 0
    assert report["running"] == 1
    assert report["sources"]["fake-activity"]["running"] == 1
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)


async def test_sigquit_stops_now(fake: FakeStepFunctions) -> None:
    """SIGQUIT: what runs is answered Worker.Shutdown within seconds, whatever the grace."""
    task = fake.add_task({"seconds": 300})
    async with worker_process(
        RUN,
        fake,
        SFN_HANDLER="sfn_worker.examples:sleep_handler",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="600",
    ) as worker:
        await worker.wait_for_log("task started")
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        worker.signal_worker(signal.SIGQUIT)
        assert await worker.exit_code(timeout=10) == 0
        assert loop.time() - signalled < 1.5 + BUSY_MACHINE_SLACK  # not the 600 s grace
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)


def _zombies_after_a_while(unshare_pid: int) -> int:
    """The worker's zombie children once they had up to 10 s to be reaped (the kernel, not
    an event we could await, says when they are gone)."""
    pid = int(Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()[0])
    deadline = time.monotonic() + 10
    while (zombies := _zombie_children(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return zombies


def _zombie_children(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    count = 0
    for child in children:
        try:
            state = Path(f"/proc/{child}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        count += state == b"Z"
    return count


@needs_pid_namespace
@pytest.mark.timeout(90)
async def test_orphans_of_handler_processes_are_reaped_as_pid_1(fake: FakeStepFunctions) -> None:
    """Handlers that start programs in the background (20 of them): as PID 1 the worker
    inherits and reaps them. They used to stay zombies until the PID limit stopped new
    handler processes."""
    tasks = [fake.add_task({}) for _ in range(20)]
    async with worker_process(
        IN_A_PID_NAMESPACE,
        fake,
        SFN_HANDLER="tests.handler_mistakes:leave_an_orphan",
        SFN_HANDLER_MODE="process",
        SFN_CONCURRENCY="2",
        SFN_SHUTDOWN_GRACE_SECONDS="2",
    ) as worker:
        await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=60)
        zombies = await asyncio.to_thread(_zombies_after_a_while, worker.process.pid)
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    assert all(t.state == "succeeded" for t in tasks)
    assert zombies == 0


prlimit = shutil.which("prlimit")


@pytest.mark.skipif(prlimit is None, reason="needs util-linux prlimit")
async def test_running_out_of_file_descriptors_is_named_once(fake: FakeStepFunctions) -> None:
    """A file limit of 40 under 100 heartbeating tasks: connections cannot open. The
    cause is named once, with the limit and what to change; every failure line says it.
    It used to read "Could not connect to the endpoint URL", the cause never named."""
    tasks = [fake.add_task({"seconds": 2}) for _ in range(100)]
    command = [str(prlimit), "--nofile=40:40", *RUN]
    async with worker_process(
        command,
        fake,
        SFN_HANDLER="sfn_worker.examples:sleep_handler",
        SFN_CONCURRENCY="100",
        SFN_POLLERS="10",
        SFN_HEARTBEAT_SECONDS="1",
        SFN_SHUTDOWN_GRACE_SECONDS="2",
    ) as worker:
        said = await worker.wait_for_log("out of file descriptors: connections cannot be opened")
        await fake.wait_for(lambda: sum(t.state != "open" for t in tasks) >= 10, timeout=30)
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        await worker.exit_code()
    assert said["open_files_limit"] == 40
    assert "ulimits nofile" in said["hint"]
    events = [e.get("event") for e in worker.events]
    assert events.count("out of file descriptors: connections cannot be opened") == 1
    failures = [e for e in worker.events if "Could not connect" in str(e.get("error", ""))]
    assert failures
    assert all("too many open files" in e["error"] for e in failures)
