"""``sfn-worker dev`` end to end: a temporary project with a handler module, LocalStack from
the cached environment, an execution through ``sfn-worker dev start``, an edit picked up by
the next execution, and Ctrl-C leaving no process of the session behind."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import boto3
import psutil
import pytest

pytestmark = [pytest.mark.localstack, pytest.mark.slow, pytest.mark.timeout(400)]

HANDLER = """
def handler(task_input, ctx):
    return {{"version": {version}, "input": task_input}}
"""
# LocalStack's first start on a busy machine, a worker start, an execution: generous bounds.
STARTUP_SECONDS = 240.0
STEP_SECONDS = 90.0


class Lines:
    """Every line a process writes, read by a thread; waited for by pattern, never slept on."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        try:
            while True:
                line = self._queue.get(timeout=timeout)
                if line is None:
                    raise AssertionError(f"output ended before {pattern!r}")
                self.seen.append(line)
                if found := re.search(pattern, line):
                    return found
        except queue.Empty:
            tail = "\n".join(self.seen[-40:])
            raise AssertionError(f"no line matched {pattern!r} in {timeout}s:\n{tail}") from None

    def rest(self) -> str:
        """Everything, once the process has closed its output."""
        self._thread.join(timeout=30)
        while (line := self._queue.get_nowait() if not self._queue.empty() else None) is not None:
            self.seen.append(line)
        return "\n".join(self.seen)

    def close(self) -> None:
        self._thread.join(timeout=30)
        self._stream.close()


def environment() -> dict[str, str]:
    # The user's shell: nothing of AWS, no worker settings (the LocalStack cache is kept).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SFN_"))}
    if "SFNW_CACHE" in os.environ:
        env["SFNW_CACHE"] = os.environ["SFNW_CACHE"]
    return env


def dev_start(project: Path, payload: object, *options: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "sfn_worker", "dev", "start", json.dumps(payload), *options],
        cwd=project,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=STEP_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(line.split(None, 1) for line in done.stdout.splitlines() if line.strip())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "my_jobs.py").write_text(HANDLER.format(version=1))
    return tmp_path


class Dev:
    """One `sfn-worker dev my_jobs:handler` in a project, as a user's shell runs it."""

    def __init__(self, project: Path, target: str, **settings: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sfn_worker", "dev", target],
            cwd=project,
            env={**environment(), **settings},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.lines = Lines(self.process.stdout)

    def session(self) -> list[psutil.Process]:
        """Every process the dev command started, and theirs."""
        return psutil.Process(self.process.pid).children(recursive=True)

    def close(self) -> None:
        if self.process.poll() is None:  # as a user would: Ctrl-C
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STEP_SECONDS)
            except subprocess.TimeoutExpired:  # leave nothing behind
                for child in self.session():
                    child.kill()
                self.process.kill()
                self.process.wait()
        self.lines.close()


@pytest.fixture
def start_dev() -> Iterator[Callable[..., Dev]]:
    started: list[Dev] = []

    def start(project: Path, target: str = "my_jobs:handler", **settings: str) -> Dev:
        started.append(Dev(project, target, **settings))
        return started[-1]

    yield start
    for dev in started:
        dev.close()


def assert_all_gone(session: list[psutil.Process], timeout: float = 10.0) -> None:
    _, alive = psutil.wait_procs(session, timeout=timeout)
    left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"left running: {left}"


def test_dev_runs_an_execution_reloads_on_an_edit_and_stops_everything(
    project: Path, start_dev: Callable[..., Dev]
) -> None:
    dev = start_dev(project)
    process, lines = dev.process, dev.lines
    port = int(lines.wait_for(r"LocalStack at http://127\.0\.0\.1:(\d+)", STARTUP_SECONDS)[1])
    lines.wait_for(r"^export AWS_ENDPOINT_URL_SFN=http://127\.0\.0\.1:\d+$", STEP_SECONDS)
    lines.wait_for(r"^export SFN_ACTIVITY_ARN=\S+:activity:dev-my_jobs-handler$", STEP_SECONDS)
    lines.wait_for(r"worker started: pid \d+, generation 1", STEP_SECONDS)
    assert (project / ".sfn-worker-dev" / "session.json").exists()

    first = dev_start(project, {"in": "SUCCESS"})
    assert first["status"] == "SUCCEEDED"
    assert json.loads(first["output"]) == {"version": 1, "input": {"in": "SUCCESS"}}

    # An edit of a different length: nothing may serve the old code from a cache.
    (project / "my_jobs.py").write_text(HANDLER.format(version=2) + "# edited\n")
    lines.wait_for(r"changed: my_jobs\.py", STEP_SECONDS)
    lines.wait_for(r"worker stopped: exit code 0", STEP_SECONDS)
    lines.wait_for(r"worker started: pid \d+, generation 2", STEP_SECONDS)

    second = dev_start(project, {"in": 2})
    assert second["status"] == "SUCCEEDED"
    assert json.loads(second["output"]) == {"version": 2, "input": {"in": 2}}

    # A mistake in the code stops nothing: the error is shown, the next save is picked up.
    (project / "my_jobs.py").write_text("def handler(task_input, ctx:\n")
    lines.wait_for(r"cannot load 'my_jobs:handler'", STEP_SECONDS)
    lines.wait_for(r"waiting for a change", STEP_SECONDS)
    (project / "my_jobs.py").write_text(HANDLER.format(version=3))
    lines.wait_for(r"worker started: pid \d+, generation 3", STEP_SECONDS)
    third = dev_start(project, {"in": 3})
    assert json.loads(third["output"]) == {"version": 3, "input": {"in": 3}}

    session = dev.session()
    assert len(session) >= 2  # LocalStack and the worker, at least
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=STEP_SECONDS) == 0
    output = lines.rest()
    assert "nothing of this session runs any more" in output
    assert_all_gone(session)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    assert not (project / ".sfn-worker-dev" / "session.json").exists()


SLOW_HANDLER = """
import asyncio


async def handler(task_input, ctx):
    await asyncio.sleep(600)
    return {"version": 1}
"""


def test_a_task_running_at_a_reload_runs_again_on_the_new_code(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    (tmp_path / "my_jobs.py").write_text(SLOW_HANDLER)
    dev = start_dev(tmp_path, SFN_SHUTDOWN_GRACE_SECONDS="3")
    dev.lines.wait_for(r"worker started: pid \d+, generation 1", STARTUP_SECONDS)
    with ThreadPoolExecutor(1) as pool:
        execution = pool.submit(dev_start, tmp_path, {"in": "slow"})
        dev.lines.wait_for(r"task started", STEP_SECONDS)
        (tmp_path / "my_jobs.py").write_text(HANDLER.format(version=2))
        # Answered Worker.Shutdown by the stopping worker, retried by the dev state machine.
        dev.lines.wait_for(r"Worker\.Shutdown", STEP_SECONDS)
        dev.lines.wait_for(r"worker started: pid \d+, generation 2", STEP_SECONDS)
        ended = execution.result(timeout=STEP_SECONDS)
    assert ended["status"] == "SUCCEEDED"
    assert json.loads(ended["output"]) == {"version": 2, "input": {"in": "slow"}}


def test_a_second_ctrl_c_does_not_wait_for_the_grace(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    (tmp_path / "my_jobs.py").write_text(SLOW_HANDLER)
    # A grace far longer than this test's bounds: only the second signal can end it in time.
    dev = start_dev(tmp_path, SFN_SHUTDOWN_GRACE_SECONDS="900")
    dev.lines.wait_for(r"worker started: pid \d+, generation 1", STARTUP_SECONDS)
    runner = subprocess.Popen(
        [sys.executable, "-m", "sfn_worker", "dev", "start", "{}"],
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        dev.lines.wait_for(r"task started", STEP_SECONDS)
        session = dev.session()
        dev.process.send_signal(signal.SIGINT)
        dev.lines.wait_for(r"stopping the worker", STEP_SECONDS)
        dev.process.send_signal(signal.SIGINT)
        assert dev.process.wait(timeout=STEP_SECONDS) == 0
        assert "nothing of this session runs any more" in dev.lines.rest()
        assert_all_gone(session)
    finally:
        runner.kill()
        runner.wait()


APP = """
from sfn_worker import App

app = App()


@app.activity("greet")
def greet(task_input, ctx):
    return {"hello": task_input["name"]}


@app.callback_queue("https://sqs.us-east-1.amazonaws.com/123456789012/render-jobs")
async def render(task_input, ctx):
    return {"rendered": task_input}
"""


def test_an_app_gets_each_activity_and_callback_queue_with_a_machine(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    # media/worker.py imports shared/util.py, outside the target module's folder.
    for package in ("media", "shared"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "media" / "worker.py").write_text("import shared.util\n" + APP)
    (tmp_path / "shared" / "util.py").write_text("VERSION = 1\n")
    dev = start_dev(tmp_path, "media.worker:app", SFN_RENDER_JOBS_QUEUE_URL="https://sqs.example/x")
    endpoint = dev.lines.wait_for(r"^export AWS_ENDPOINT_URL_SQS=(\S+)$", STARTUP_SECONDS)[1]
    dev.lines.wait_for(r"^export SFN_GREET_ACTIVITY_ARN=\S+:activity:greet$", STEP_SECONDS)
    # The queue is LocalStack's, whatever the shell said, on the printed endpoint's address
    # (not localhost.localstack.cloud, which needs DNS): usable as printed.
    queue_url = dev.lines.wait_for(
        r"^export SFN_RENDER_JOBS_QUEUE_URL=(http://\S+/render-jobs)$", STEP_SECONDS
    )[1]
    assert queue_url.startswith(f"{endpoint}/")
    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    assert sqs.get_queue_url(QueueName="render-jobs")["QueueUrl"] == queue_url
    sqs.get_queue_attributes(QueueUrl=queue_url)
    dev.lines.wait_for(r"worker started: pid \d+, generation 1", STEP_SECONDS)
    greeted = dev_start(tmp_path, {"name": "Ada"}, "--activity", "greet")
    assert json.loads(greeted["output"]) == {"hello": "Ada"}
    rendered = dev_start(tmp_path, {"frame": 1}, "--activity", "render-jobs")
    assert json.loads(rendered["output"]) == {"rendered": {"frame": 1}}
    # A module outside the target's folder: the whole project is watched.
    (tmp_path / "shared" / "util.py").write_text("VERSION = 2\n")
    dev.lines.wait_for(r"changed: shared/util\.py", STEP_SECONDS)
    dev.lines.wait_for(r"worker started: pid \d+, generation 2", STEP_SECONDS)


def test_the_dev_command_killed_outright_takes_its_worker_and_localstack_along(
    project: Path, start_dev: Callable[..., Dev]
) -> None:
    dev = start_dev(project)
    dev.lines.wait_for(r"worker started: pid \d+, generation 1", STARTUP_SECONDS)
    session = dev.session()
    # What a killed session leaves behind by design: LocalStack's temporary directory.
    boot = next(arg for p in session for arg in p.cmdline() if arg.endswith("localstack_boot.py"))
    dev.process.kill()  # no cleanup of its own: the kernel's parent-death signals do it
    dev.process.wait()
    assert_all_gone(session, timeout=STEP_SECONDS)  # the worker drains first (SIGTERM)
    done = subprocess.run(
        [sys.executable, "-m", "sfn_worker", "dev", "start", "{}"],
        cwd=project,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=STEP_SECONDS,
        check=False,
    )
    assert done.returncode == 2
    assert "has ended" in done.stderr
    shutil.rmtree(Path(boot).parent)


def test_localstack_ending_on_its_own_ends_the_session_and_says_so(
    project: Path, start_dev: Callable[..., Dev]
) -> None:
    dev = start_dev(project)
    pid = int(dev.lines.wait_for(r"LocalStack at \S+ \(port \d+, pid (\d+)\)", STARTUP_SECONDS)[1])
    dev.lines.wait_for(r"worker started: pid \d+, generation 1", STEP_SECONDS)
    session = dev.session()
    os.kill(pid, signal.SIGKILL)
    dev.lines.wait_for(r"LocalStack exited on its own", STEP_SECONDS)
    assert dev.process.wait(timeout=STEP_SECONDS) == 1
    assert "nothing of this session runs any more" in dev.lines.rest()
    assert_all_gone(session)


FIFO_APP = """
from sfn_worker import App

app = App()


@app.callback_queue("https://sqs.us-east-1.amazonaws.com/123456789012/render-jobs.fifo")
async def render(task_input, ctx):
    return {"rendered": task_input}
"""


def test_a_fifo_callback_queue_gets_a_fifo_queue_and_a_machine(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    """A FIFO queue (`.fifo`, which the worker serves) is created as one, and its machine
    sends with a message group: CreateQueue was refused and the session ended in a
    traceback."""
    (tmp_path / "jobs.py").write_text(FIFO_APP)
    dev = start_dev(tmp_path, "jobs:app")
    dev.lines.wait_for(
        r"^export SFN_RENDER_JOBS_FIFO_QUEUE_URL=(http://\S+/render-jobs\.fifo)$", STARTUP_SECONDS
    )
    dev.lines.wait_for(r"worker started: pid \d+, generation 1", STEP_SECONDS)
    rendered = dev_start(tmp_path, {"frame": 1}, "--activity", "render-jobs.fifo")
    assert json.loads(rendered["output"]) == {"rendered": {"frame": 1}}
