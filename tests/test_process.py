"""The installed ``sfn-worker`` as a real process: the image's command, PID 1, signals."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sfn_worker import SHUTDOWN_ERROR
from sfn_worker.testing import FakeStepFunctions

from .bounds import BUSY_MACHINE_SLACK
from .test_config_files import image_command, image_env
from .test_operations import free_port

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """A worker subprocess whose JSON log lines can be awaited."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            text = line.decode(errors="replace").rstrip()
            self.raw.append(text)
            try:
                self.events.append(json.loads(text))
            except ValueError:
                continue
            async with self._changed:
                self._changed.notify_all()

    async def wait_for_log(self, event: str, timeout: float = 20) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("event") == event), None)

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        result = found()
        assert result is not None
        return result

    def signal_worker(self, signum: int) -> None:
        """Signal the worker itself (PID 1 inside its namespace when run under unshare)."""
        target = self.process.pid
        children = Path(f"/proc/{target}/task/{target}/children")
        if Path(f"/proc/{target}/comm").read_text().strip() == "unshare":
            target = int(children.read_text().split()[0])
        os.kill(target, signum)

    async def exit_code(self, timeout: float = 30) -> int:
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            await self._reader
        return code


@asynccontextmanager
async def worker_process(
    command: list[str], fake: FakeStepFunctions, **settings: str
) -> AsyncIterator[WorkerProcess]:
    defaults = {
        "SFN_ACTIVITY_ARN": fake.activity_arn,
        "SFN_HANDLER": "sfn_worker.examples:seed_handler",  # required; a test's own wins
        "SFN_WORKER_NAME": "process-test",
    }
    async with spawned_worker(command, {**defaults, **settings}) as worker:
        yield worker


@asynccontextmanager
async def spawned_worker(
    command: list[str], settings: dict[str, str]
) -> AsyncIterator[WorkerProcess]:
    """The command with no SFN_* of this environment but ``settings`` (JSON logs unless
    they say otherwise), the repository importable; killed if a test leaves it running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    env["SFN_LOG_FORMAT"] = "json"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(settings)
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    worker = WorkerProcess(process)
    try:
        yield worker
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await worker._reader


def resolve(command: list[str]) -> list[str]:
    executable = BIN / command[0]
    assert executable.exists(), f"{command[0]} is not installed in the environment"
    return [str(executable), *command[1:]]


async def wait_states(fake: FakeStepFunctions, check: Callable[[], bool]) -> None:
    await fake.wait_for(check, timeout=20)


async def test_image_command_runs_on_the_host(fake: FakeStepFunctions) -> None:
    """ENTRYPOINT + CMD from the Dockerfile, with its ENV, works tasks and stops on SIGTERM."""
    port = free_port()
    env = image_env()
    env.pop("PATH", None)
    env["SFN_HTTP_PORT"] = str(port)
    env["SFN_HTTP_HOST"] = "127.0.0.1"
    ok, bad = fake.add_task({"in": "SUCCESS"}), fake.add_task({"in": "RANDOM"})
    async with worker_process(resolve(image_command()), fake, **env) as worker:
        await wait_states(fake, lambda: ok.state != "open" and bad.state != "open")
        await fake.wait_for(lambda: fake.open_polls == 16)  # a poll per free slot
        health = await asyncio.create_subprocess_exec(
            str(BIN / "sfn-worker"),
            "healthcheck",
            env={**os.environ, "SFN_HTTP_PORT": str(port)},
            stdout=asyncio.subprocess.DEVNULL,
        )
        assert await health.wait() == 0
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    assert ok.state == "succeeded"
    assert (bad.state, bad.error) == ("failed", "NO_SUCCESS_INPUT")
    ended = [e for e in worker.events if e.get("event") == "task ended"]
    assert {e["outcome"] for e in ended} == {"succeeded", "failed"}
    # Every source's lines say its name and kind the same way.
    assert {(e["source"], e["kind"]) for e in ended} == {("fake-activity", "activity")}
    assert not any("activity" in e for e in ended)


unshare = shutil.which("unshare")
needs_pid_namespace = pytest.mark.skipif(
    unshare is None or os.geteuid() != 0,
    reason="needs util-linux unshare and root for a PID namespace",
)


@needs_pid_namespace
async def test_sigterm_to_pid_1_answers_in_flight_and_late_tasks(fake: FakeStepFunctions) -> None:
    command = [str(unshare), "--pid", "--fork", "--mount-proc", str(BIN / "sfn-worker"), "run"]
    running = [fake.add_task({"seconds": 300}) for _ in range(2)]
    async with worker_process(
        command,
        fake,
        SFN_HANDLER="sfn_worker.examples:sleep_handler",
        SFN_POLLERS="2",
        SFN_CONCURRENCY="8",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="3",
    ) as worker:
        await worker.wait_for_log("worker started")
        await wait_states(fake, lambda: all(t.issued for t in running) and fake.open_polls == 2)
        worker.signal_worker(signal.SIGTERM)
        await worker.wait_for_log("shutdown: polling stopped")
        late = fake.add_task({"seconds": 1})  # handed to a poll that was open at SIGTERM
        await wait_states(fake, lambda: late.state != "open")
        fake.release_polls()
        assert await worker.exit_code() == 0
    for task in [*running, late]:
        assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)
        assert task.terminal_calls == 1
    assert "not started" in (late.cause or "")
    started = [e for e in worker.events if e.get("event") == "task started"]
    assert len(started) == 3


@needs_pid_namespace
async def test_second_sigterm_exits_within_two_seconds(fake: FakeStepFunctions) -> None:
    command = [str(unshare), "--pid", "--fork", "--mount-proc", str(BIN / "sfn-worker"), "run"]
    task = fake.add_task({"seconds": 300})
    async with worker_process(
        command,
        fake,
        SFN_HANDLER="sfn_worker.examples:sleep_handler",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS="600",
    ) as worker:
        await wait_states(fake, lambda: task.issued)
        worker.signal_worker(signal.SIGTERM)
        await worker.wait_for_log("shutdown: polling stopped")
        loop = asyncio.get_running_loop()
        second = loop.time()
        worker.signal_worker(signal.SIGTERM)
        assert await worker.exit_code(timeout=10) == 0
        assert loop.time() - second < 1.5 + BUSY_MACHINE_SLACK  # not the 600 s grace
    assert (task.state, task.error) == ("failed", SHUTDOWN_ERROR)


@pytest.mark.parametrize(
    ("settings", "drop_credentials", "expected"),
    [
        (
            {"SFN_ACTIVITY_ARN": "arn:aws:states:us-east-1:123456789012:activity:gone"},
            False,
            "ActivityDoesNotExist",
        ),
        ({}, True, "credentials"),
    ],
    ids=["no-such-activity", "no-credentials"],
)
async def test_fatal_errors_exit_1_with_a_clear_message(
    fake: FakeStepFunctions,
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, str],
    drop_credentials: bool,
    expected: str,
) -> None:
    if drop_credentials:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"], fake, SFN_SHUTDOWN_GRACE_SECONDS="1", **settings
    ) as worker:
        assert await worker.exit_code() == 1
    stopped = [e for e in worker.events if e.get("event") == "worker stopped"]
    assert stopped
    assert expected in stopped[-1]["error"]
    assert not any("Traceback" in line for line in worker.raw)


async def test_sigterm_with_stubborn_thread_handlers_exits_inside_the_grace(
    fake: FakeStepFunctions,
) -> None:
    """Sync handlers that never look at cancellation: the process still leaves on time."""
    grace = 3.0
    tasks = [fake.add_task({"seconds": 120}) for _ in range(50)]
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="sfn_worker.examples:blocking_sleep_handler",
        SFN_POLLERS="5",
        SFN_CONCURRENCY="50",
        SFN_HEARTBEAT_SECONDS="0",
        SFN_SHUTDOWN_GRACE_SECONDS=str(grace),
    ) as worker:
        await wait_states(fake, lambda: all(t.issued for t in tasks))
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
        assert loop.time() - signalled < grace + 5
    assert all((t.state, t.error) == ("failed", SHUTDOWN_ERROR) for t in tasks)
    assert any(
        e.get("event") == "exiting with handler threads still running" for e in worker.events
    )


async def test_the_custom_image_serves_its_handler(fake: FakeStepFunctions) -> None:
    """examples/custom-image: the base image's command with the custom image's ENV, its
    package where the image puts it (/opt/app there, its folder here)."""
    custom = REPO / "examples" / "custom-image"
    env = image_env(custom / "Dockerfile")
    env["PYTHONPATH"] = str(custom)  # /opt/app in the image
    task = fake.add_task({"name": "clip.mp4", "bytes": 5 * 1024 * 1024})
    async with worker_process(resolve(image_command()), fake, **env) as worker:
        await wait_states(fake, lambda: task.state != "open")
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    assert json.loads(task.output or "") == {"name": "clip.mp4", "size": "5.0 MiB"}
