"""The process's own boundary: started by a supervisor with standard streams closed.

Some supervisors start services with stdin, stdout or stderr closed (``<&-``); the next
file the process opens then takes descriptor 0, 1 or 2, and what is written "to stderr"
lands in it, or uvloop aborts at exit closing it. The worker opens /dev/null on a closed
standard descriptor first thing, so it serves and exits 0 as with open ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from sfn_worker.testing import FakeStepFunctions

from ..test_process import BIN, REPO

EXITED = 15.0  # SIGTERM to exit on two busy cores: a 2 s grace, the exit, the shell


@pytest.mark.parametrize(
    "closed",
    ["<&-", ">&-", "2>&-", "<&- >&- 2>&-"],
    ids=["stdin", "stdout", "stderr", "all-three"],
)
async def test_closed_standard_streams_at_start_still_serve_and_exit_0(
    fake: FakeStepFunctions, closed: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    env.update(
        SFN_ACTIVITY_ARN=fake.activity_arn,
        SFN_HANDLER="sfn_worker.examples:seed_handler",
        SFN_SHUTDOWN_GRACE_SECONDS="2",
        SFN_METRICS="emf",  # stdout is written too (at the end at least)
        SFN_METRICS_INTERVAL_SECONDS="1",
        PYTHONPATH=str(REPO),
    )
    # As a supervisor does it: the shell closes them, then becomes the worker.
    process = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        f'exec "$0" run {closed}',
        str(BIN / "sfn-worker"),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 24,
    )
    try:
        outputs = asyncio.gather(_read(process.stdout), _read(process.stderr))
        tasks = [fake.add_task({"in": "SUCCESS"}), fake.add_task({"in": "NOPE"})]
        await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=30)
        process.send_signal(signal.SIGTERM)
        fake.release_polls()
        async with asyncio.timeout(EXITED):
            code = await process.wait()
            stdout, stderr = await outputs
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0, stderr.decode(errors="replace")[-2000:]
    assert [t.state for t in tasks] == ["succeeded", "failed"]
    if "2>&-" not in closed:
        events = [json.loads(line)["event"] for line in stderr.splitlines()]
        assert events[-1] == "worker stopped"
    if ">&-" not in closed:
        assert all("_aws" in json.loads(line) for line in stdout.splitlines())
        assert stdout


async def _read(stream: asyncio.StreamReader | None) -> bytes:
    assert stream is not None
    return await stream.read()
