"""Process mode with more slots than handler processes: how many processes (SFN_PROCESSES,
the cgroup's CPU quota), and what a task waiting for a process is owed: its slot, its
heartbeats, its turn, and Worker.Shutdown if the worker stops first."""

from __future__ import annotations

import itertools
import json
import signal
from pathlib import Path

import pytest

from sfn_worker.errors import SHUTDOWN_ERROR
from sfn_worker.tasks.handlers.cpus import available_cpus, cgroup_cpu_quota
from sfn_worker.testing import FakeStepFunctions

from . import handler_mistakes as mistakes
from .conftest import running_worker
from .test_process import BIN, worker_process
from .test_settings_and_cli import ARN, SEED, _run_cli


# -- how many CPUs ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "junk\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, None),
        ({}, None),
    ],
)
def test_the_cgroup_quota_is_read_from_v2_then_v1(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_processes_default_to_the_quota_rounded_up_within_the_schedulable_cpus(
    tmp_path: Path,
) -> None:
    schedulable = available_cpus(tmp_path)  # no quota: the CPUs this process may run on
    assert schedulable >= 1
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{schedulable * 100000 - 50000} 100000\n")
    assert available_cpus(tmp_path) == schedulable  # 1.5 CPUs: 2
    (tmp_path / "cpu.max").write_text(f"{(schedulable + 8) * 100000} 100000\n")
    assert available_cpus(tmp_path) == schedulable  # a quota above the host's CPUs


@pytest.mark.parametrize("value", ["-1", "abc", "4097", "1.5"])
def test_a_bad_process_count_is_one_line_naming_the_variable_and_exit_2(value: str) -> None:
    result = _run_cli(
        "run", env={"SFN_ACTIVITY_ARN": ARN, "SFN_HANDLER": SEED, "SFN_PROCESSES": value}
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "SFN_PROCESSES" in line


@pytest.mark.parametrize(
    ("processes", "shown"),
    [
        ("8", "processes          8, capped at the concurrency (2)"),
        ("2", "processes          2 (environment"),
        ("0", f"processes          0 = one per CPU it may use ({available_cpus()})"),
    ],
)
def test_settings_show_the_processes_capped_at_the_concurrency(processes: str, shown: str) -> None:
    env = {
        "SFN_ACTIVITY_ARN": ARN,
        "SFN_HANDLER": SEED,
        "SFN_HANDLER_MODE": "process",
        "SFN_PROCESSES": processes,
        "SFN_CONCURRENCY": "2",
    }
    result = _run_cli("settings", env=env)
    assert result.returncode == 0, result.stderr
    assert shown in result.stdout, result.stdout  # was "8" while 2 processes at most ran


# -- tasks waiting for a process ----------------------------------------------------------------
@pytest.mark.timeout(90)
async def test_tasks_beyond_the_processes_take_turns_in_one_process(
    fake: FakeStepFunctions,
) -> None:
    tasks = [fake.add_task({"seconds": 0.2}) for _ in range(3)]
    async with running_worker(
        fake, mistakes.stamped_sleep, handler_mode="process", concurrency=3, processes=1
    ):
        await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=60)
    outputs = [json.loads(t.output or "") for t in tasks]
    assert [t.state for t in tasks] == ["succeeded"] * 3
    assert len({o["pid"] for o in outputs}) == 1
    starts = sorted(o["started"] for o in outputs)
    # One at a time: each started after the one before had slept its 0.2 s.
    assert all(later - earlier >= 0.2 for earlier, later in itertools.pairwise(starts))


@pytest.mark.timeout(90)
async def test_a_task_waiting_for_a_process_is_held_heartbeated_and_failed_at_shutdown(
    fake: FakeStepFunctions,
) -> None:
    running = fake.add_task({"cooperative": True})
    waiting = fake.add_task({"quick": True})
    async with running_worker(
        fake,
        mistakes.cancellable,
        handler_mode="process",
        concurrency=2,
        pollers=1,
        processes=1,
        heartbeat_seconds=0.2,
        shutdown_grace_seconds=1,
    ) as harness:
        await fake.wait_for(lambda: waiting.issued and waiting.heartbeats >= 3, timeout=60)
        assert waiting.state == "open"  # held, not run: the one process is busy
        await harness.stop()
        await harness.wait(timeout=30)
    # The grace ran out: the running task was cancelled, the waiting one never ran.
    assert (waiting.state, waiting.error) == ("failed", SHUTDOWN_ERROR)
    assert (running.state, running.error) == ("failed", SHUTDOWN_ERROR)
    assert waiting.terminal_calls == running.terminal_calls == 1


@pytest.mark.timeout(90)
async def test_a_big_input_to_a_process_still_starting_waits_for_the_pipe_off_the_loop(
    fake: FakeStepFunctions,
) -> None:
    interval = 0.3
    fake.heartbeat_times = {}
    # 250 KB each (near Step Functions' 256 KB): more than the pipe takes at once (180 KB)
    # while its process imports for 3 s and reads nothing; the rest waits for the pipe.
    tasks = [fake.add_task({"seconds": 1, "pad": "x" * 250_000}) for _ in range(2)]
    async with worker_process(
        [str(BIN / "sfn-worker"), "run"],
        fake,
        SFN_HANDLER="tests.handler_mistakes:stamped_sleep",
        SFN_HANDLER_MODE="process",
        SFN_CONCURRENCY="2",
        SFN_PROCESSES="2",
        SFN_POLLERS="2",
        SFN_HEARTBEAT_SECONDS=str(interval),
        SFN_SHUTDOWN_GRACE_SECONDS="3",
        SLOW_HANDLER_IMPORT_SECONDS="3",
    ) as worker:
        await fake.wait_for(lambda: all(t.state != "open" for t in tasks), timeout=60)
        worker.signal_worker(signal.SIGTERM)
        fake.release_polls()
        assert await worker.exit_code() == 0
    assert [t.state for t in tasks] == ["succeeded"] * 2
    gaps = [
        later - earlier
        for times in fake.heartbeat_times.values()
        for earlier, later in itertools.pairwise(times)
    ]
    # Heartbeats went on through the import: no gap near its 3 s.
    assert gaps
    assert max(gaps) < 2.0, gaps
