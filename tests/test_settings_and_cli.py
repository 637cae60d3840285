"""Settings validation and the command line: clear errors, exit codes, ``check``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sfn_worker.cli import build_runtime, main
from sfn_worker.config import ActivityConfig
from sfn_worker.runtime.check import check
from sfn_worker.runtime.shutdown import failure_reserve_seconds
from sfn_worker.settings import (
    DEFAULT_POLLERS,
    HandlerMode,
    LogLevel,
    Settings,
    SettingsError,
    env_name,
    load_settings,
)
from sfn_worker.testing import DEFAULT_ACTIVITY_ARN, FakeStepFunctions

from .test_process import BIN, REPO

ARN = DEFAULT_ACTIVITY_ARN
SEED = "sfn_worker.examples:seed_handler"


def activity_from_env() -> ActivityConfig:
    """The single activity's settings, as ``sfn-worker run`` would resolve them."""
    config = build_runtime(load_settings(), None).configs[0]
    assert isinstance(config, ActivityConfig)
    return config


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFN_ACTIVITY_ARN", ARN)
    monkeypatch.setenv("SFN_HANDLER", SEED)
    settings = load_settings()
    activity = activity_from_env()
    assert settings.handler == SEED
    assert Settings.model_fields["handler"].default is None  # required: none is guessed
    # One poll per free slot: the default cap (32) is capped at the concurrency.
    assert (activity.pollers, activity.concurrency, activity.effective_queue_size) == (16, 16, 16)
    assert activity.heartbeat_seconds == 10
    assert settings.shutdown_grace_seconds == 25
    # The built-in seed handler is @non_blocking: on the loop unless told otherwise.
    assert activity.handler_mode is HandlerMode.ASYNC
    assert settings.handler_mode is HandlerMode.THREAD
    assert 1 <= len(settings.worker_name) <= 80
    # The reserve for failure calls leaves most of the grace for draining.
    assert failure_reserve_seconds(25, activity.concurrency) < settings.shutdown_grace_seconds / 2
    with pytest.raises(Exception, match="frozen"):
        settings.pollers = 5


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_an_explicit_handler_mode_wins_over_non_blocking(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("SFN_ACTIVITY_ARN", ARN)
    monkeypatch.setenv("SFN_HANDLER", SEED)
    monkeypatch.setenv("SFN_HANDLER_MODE", mode)
    activity = activity_from_env()
    assert activity.handler_mode is HandlerMode(mode)
    assert activity.sources["handler_mode"] == "environment (SFN_HANDLER_MODE)"


def test_non_blocking_says_where_the_mode_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFN_ACTIVITY_ARN", ARN)
    monkeypatch.setenv("SFN_HANDLER", SEED)
    assert activity_from_env().sources["handler_mode"] == "the handler is marked @non_blocking"


def test_a_default_poller_count_is_capped_at_the_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SFN_ACTIVITY_ARN", ARN)
    monkeypatch.setenv("SFN_HANDLER", SEED)
    monkeypatch.setenv("SFN_CONCURRENCY", "2")  # refused before: the default SFN_POLLERS is 32
    activity = activity_from_env()
    assert (activity.pollers, activity.concurrency) == (2, 2)
    assert activity.sources["pollers"] == "default, capped at the concurrency (2)"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SFN_ACTIVITY_ARN is required but not set"),
        ({"SFN_ACTIVITY_ARN": "nope"}, "SFN_ACTIVITY_ARN='nope' is invalid"),
        ({"SFN_ACTIVITY_ARN": ARN, "SFN_POLLERS": "abc"}, "SFN_POLLERS='abc' is invalid"),
        ({"SFN_ACTIVITY_ARN": ARN, "SFN_POLLERS": "0"}, "SFN_POLLERS='0' is invalid"),
        (
            {"SFN_ACTIVITY_ARN": ARN, "SFN_POLLERS": "20", "SFN_CONCURRENCY": "16"},
            "SFN_POLLERS (20) must not exceed SFN_CONCURRENCY (16)",
        ),
        ({"SFN_ACTIVITY_ARN": ARN, "SFN_WORKER_NAME": "x" * 81}, "SFN_WORKER_NAME="),
        ({"SFN_ACTIVITY_ARN": ARN, "SFN_HANDLER": "no-colon"}, "SFN_HANDLER='no-colon'"),
        ({"SFN_ACTIVITY_ARN": ARN, "SFN_HANDLER_MODE": "fork"}, "SFN_HANDLER_MODE='fork'"),
        ({"SFN_ACTIVITY_ARN": ARN, "LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' is invalid"),
        ({"SFN_ACTIVITY_ARN": ARN, "SFN_HEARTBEAT_SECONDS": "-1"}, "SFN_HEARTBEAT_SECONDS"),
        (
            {"SFN_ACTIVITY_ARN": ARN, "SFN_HEARTBEAT_SECONDS": "nan"},
            "SFN_HEARTBEAT_SECONDS='nan' is invalid: Input should be a finite number",
        ),
        (
            {"SFN_ACTIVITY_ARN": ARN, "SFN_SHUTDOWN_GRACE_SECONDS": "inf"},
            "SFN_SHUTDOWN_GRACE_SECONDS='inf' is invalid: Input should be a finite number",
        ),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        activity_from_env()
    assert message in str(caught.value)


def test_names_are_upper_case_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lower-case name is not read (pydantic-settings matched names ignoring case)."""
    monkeypatch.setenv("SFN_ACTIVITY_ARN", ARN)
    monkeypatch.setenv("log_level", "debug")
    monkeypatch.setenv("sfn_concurrency", "abc")
    monkeypatch.setenv("Sfn_Pollers", "2")
    settings = load_settings()
    assert settings.log_level == LogLevel.INFO
    assert settings.concurrency == 16
    assert settings.pollers == DEFAULT_POLLERS
    assert not settings.explicit("log_level")


@pytest.mark.parametrize(
    ("typed", "level"),
    [
        ("warn", LogLevel.WARNING),
        ("WARN", LogLevel.WARNING),
        ("trace", LogLevel.DEBUG),
        ("critical", LogLevel.CRITICAL),
        ("FATAL", LogLevel.CRITICAL),
        ("Warning", LogLevel.WARNING),
    ],
)
def test_log_level_takes_the_spellings_other_tools_share_it_with(
    monkeypatch: pytest.MonkeyPatch, typed: str, level: LogLevel
) -> None:
    """LOG_LEVEL is a shared name: `warn` set for another tool must not stop the worker."""
    monkeypatch.setenv("SFN_ACTIVITY_ARN", ARN)
    monkeypatch.setenv("LOG_LEVEL", typed)
    assert load_settings().log_level == level
    monkeypatch.setenv("SFN_LOG_LEVEL", level.value)  # the same level: no conflict
    assert load_settings().log_level == level


def _run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "sfn_worker", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SFN_ACTIVITY_ARN": ARN, "SFN_HANDLER": SEED, "SFN_POLLERS": "abc"},
            "SFN_POLLERS='abc' is invalid",
        ),
        ({"SFN_ACTIVITY_ARN": ARN, "SFN_HANDLER": "nowhere.at_all:fn"}, "cannot import"),
        ({"SFN_ACTIVITY_ARN": ARN, "SFN_HANDLER": "sfn_worker.examples:missing"}, "no attribute"),
        ({}, "SFN_ACTIVITY_ARN is required"),
    ],
)
def test_bad_configuration_exits_2_with_one_clear_line(env: dict[str, str], message: str) -> None:
    result = _run_cli("run", env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_region_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SFN_ACTIVITY_ARN": ARN, "SFN_HANDLER": SEED, "AWS_REGION": "", "AWS_DEFAULT_REGION": ""}
    result = _run_cli("check", env=env)
    assert result.returncode == 2
    assert "AWS_REGION" in result.stderr


def _run_cli_with_no_credentials(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    """No credentials anywhere in the chain: no keys, files, container or instance role."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SFN_", "AWS_"))}
    clean.update(
        SFN_ACTIVITY_ARN=ARN,
        SFN_HANDLER=SEED,
        AWS_REGION="us-east-1",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/credentials",
        AWS_CONFIG_FILE="/nonexistent/config",
        AWS_EC2_METADATA_DISABLED="true",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "sfn_worker", command],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["run", "check"])
def test_no_credentials_is_one_line_and_exit_1(command: str) -> None:
    # check printed an 18-line traceback: the first command a newcomer runs.
    result = _run_cli_with_no_credentials(command)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no AWS credentials found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("profile", ["", "no-such-profile"])
def test_a_profile_that_is_not_there_is_a_configuration_error(command: str, profile: str) -> None:
    # It was a botocore traceback (exit 1) from both commands.
    result = _run_cli_with_no_credentials(command, AWS_PROFILE=profile)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"AWS_PROFILE={profile!r} names no profile" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_check_against_fake(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("SFN_ACTIVITY_ARN", fake.activity_arn)
    monkeypatch.setenv("SFN_HANDLER", SEED)
    assert await check(load_settings(), [activity_from_env()]) == 0
    assert "OK" in capsys.readouterr().out
    monkeypatch.setenv("SFN_ACTIVITY_ARN", fake.activity_arn + "-missing")
    assert await check(load_settings(), [activity_from_env()]) == 1
    assert "ActivityDoesNotExist" in capsys.readouterr().err


def test_version_flag(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert "sfn-worker" in capsys.readouterr().out


async def test_check_warns_about_the_heartbeat_rate(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("SFN_ACTIVITY_ARN", fake.activity_arn)
    monkeypatch.setenv("SFN_HANDLER", SEED)
    monkeypatch.setenv("SFN_CONCURRENCY", "5000")
    monkeypatch.setenv("SFN_HEARTBEAT_SECONDS", "10")
    assert await check(load_settings(), [activity_from_env()]) == 0
    assert "500 heartbeats/s" in capsys.readouterr().out


def test_library_logs_share_the_json_format() -> None:
    import io
    import json
    import logging

    from sfn_worker.logs import configure_logging, reset_logging
    from sfn_worker.settings import LogFormat, LogLevel

    stream = io.StringIO()
    configure_logging(LogLevel.DEBUG, LogFormat.JSON, "log-test", stream=stream)
    try:
        logging.getLogger("botocore.endpoint").debug("request body with a payload")
        logging.getLogger("aiohttp.server").warning("Error handling request")
    finally:
        reset_logging()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines == [
        {
            "event": "Error handling request",
            "level": "warning",
            "logger": "aiohttp.server",
            "timestamp": lines[0]["timestamp"],
            "worker": "log-test",
        }
    ]


def test_an_http_port_in_use_is_a_configuration_error(fake: FakeStepFunctions) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_cli(
            "run",
            env={
                "SFN_ACTIVITY_ARN": fake.activity_arn,
                "SFN_HANDLER": SEED,
                "SFN_HTTP_PORT": str(port),
                "SFN_HTTP_HOST": "127.0.0.1",
            },
        )
    assert result.returncode == 2
    assert f"SFN_HTTP_PORT={port}: cannot listen" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("host", ["not a host", "192.0.2.1"])
def test_an_http_host_that_cannot_be_bound_names_the_host(
    fake: FakeStepFunctions, host: str
) -> None:
    """A name that does not resolve, an address not on this machine: the host's fault."""
    env = {"SFN_ACTIVITY_ARN": fake.activity_arn, "SFN_HANDLER": SEED, "SFN_HTTP_HOST": host}
    result = _run_cli("run", env=env | {"SFN_HTTP_PORT": "48090"})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"SFN_HTTP_HOST={host!r}: cannot listen on {host}:48090" in line


# -- the current directory on the import path -------------------------------------------------

HANDLER_MODULE = """
from sfn_worker import App


def render_video(task_input, ctx):
    return {"rendered": task_input, "by": __name__}
"""
APP_MODULE = """
from sfn_worker import App

app = App()


@app.activity("render", concurrency=3)
def render(task_input, ctx):
    return {"rendered": task_input}
"""


RENDER = "arn:aws:states:eu-west-1:123456789012:activity:render"


@pytest.fixture
def user_code(tmp_path: Any) -> Any:
    """A folder holding the user's code, as a newcomer has it: my_jobs.py and media/."""
    (tmp_path / "my_jobs.py").write_text(HANDLER_MODULE)
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "__init__.py").write_text("")
    (tmp_path / "media" / "worker.py").write_text(APP_MODULE)
    return tmp_path


def _console_script(*args: str, cwd: Any, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed ``sfn-worker`` (not ``python -m``, which puts the cwd on sys.path)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    full_env.pop("PYTHONPATH", None)
    full_env.update(env)
    return subprocess.run(
        [str(BIN / "sfn-worker"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["settings", "media.worker:app"], {}),
        (["settings"], {"SFN_ACTIVITY_ARN": RENDER, "SFN_HANDLER": "my_jobs:render_video"}),
        (["settings", "--handler", "my_jobs:render_video"], {"SFN_ACTIVITY_ARN": RENDER}),
        (["settings"], {"SFN_APP": "media.worker:app"}),
    ],
)
def test_the_console_script_imports_user_code_from_the_current_directory(
    user_code: Any, args: list[str], env: dict[str, str]
) -> None:
    """It used to fail with ``cannot import`` (exit 2): the console script's sys.path[0] is
    its own bin directory, not the current one."""
    result = _console_script(*args, cwd=user_code, env=env)
    assert result.returncode == 0, result.stderr
    assert "activity 'render'" in result.stdout


async def _work_one_task_from(
    fake: FakeStepFunctions, user_code: Any, mode: str
) -> tuple[Any, int | None, str]:
    """``sfn-worker run`` started in the folder holding my_jobs.py works one task, then
    stops: the task, the exit code and the worker's log."""
    task = fake.add_task({"in": "SUCCESS"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    env.pop("PYTHONPATH", None)
    env.update(
        SFN_ACTIVITY_ARN=fake.activity_arn,
        SFN_HANDLER="my_jobs:render_video",
        SFN_HANDLER_MODE=mode,
        SFN_SHUTDOWN_GRACE_SECONDS="2",
    )
    worker = await asyncio.create_subprocess_exec(
        str(BIN / "sfn-worker"),
        "run",
        cwd=user_code,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await fake.wait_for(lambda: task.state != "open", timeout=30)
        worker.send_signal(signal.SIGTERM)
        fake.release_polls()
        _, stderr = await asyncio.wait_for(worker.communicate(), 30)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    return task, worker.returncode, stderr.decode(errors="replace")


async def test_run_and_process_mode_import_user_code_from_the_current_directory(
    fake: FakeStepFunctions, user_code: Any
) -> None:
    """``sfn-worker run`` from the folder holding my_jobs.py, in process mode: the spawned
    handler process imports it too."""
    task, code, log = await _work_one_task_from(fake, user_code, "process")
    assert code == 0, log[-2000:]
    assert task.state == "succeeded"
    assert json.loads(task.output or "{}") == {"rendered": {"in": "SUCCESS"}, "by": "my_jobs"}


# Modules a user may well have beside their handlers, named like modules the worker imports
# after the current directory is on the path: in the worker (uvloop when the loop starts,
# stringprep at the first request) and in a handler process (nearly everything, and what
# multiprocessing's `python -c` start imports: types, signal, socket).
SHADOWS = (
    *("uvloop", "stringprep", "json", "logging", "asyncio", "secrets", "queue", "resource"),
    *("types", "signal", "socket"),
)


@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_modules_in_the_current_directory_never_replace_the_workers_own(
    fake: FakeStepFunctions, user_code: Any, mode: str
) -> None:
    """``secrets.py`` beside my_jobs.py made every process-mode task fail with
    Worker.HandlerProcessDied; ``uvloop.py`` made run and check end in a traceback;
    ``stringprep.py`` failed every call to AWS."""
    for name in SHADOWS:
        (user_code / f"{name}.py").write_text(f"raise RuntimeError('the user module {name}.py')\n")
    task, code, log = await _work_one_task_from(fake, user_code, mode)
    assert code == 0, log[-2000:]
    assert task.state == "succeeded", log[-2000:]
    assert "the user module" not in log


async def test_check_imports_user_code_from_the_current_directory_and_labels_the_env(
    fake: FakeStepFunctions, user_code: Any
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFN_")}
    env.pop("PYTHONPATH", None)
    env.update(SFN_ACTIVITY_ARN=fake.activity_arn, SFN_HANDLER="my_jobs:render_video")
    process = await asyncio.create_subprocess_exec(
        str(BIN / "sfn-worker"),
        "check",
        "--concurrency",
        "3",
        cwd=user_code,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode(errors="replace")
    out = stdout.decode()
    assert "handler            my_jobs:render_video (environment (SFN_HANDLER))" in out
    assert f"arn                {fake.activity_arn} (environment (SFN_ACTIVITY_ARN))" in out
    assert "concurrency        3 (flag (--concurrency))" in out


# -- where each setting came from -------------------------------------------------------------


async def test_check_labels_an_environment_queue_url_as_the_environment(
    fake: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """It was labelled "(code)": the single form's queue comes from SFN_SQS_QUEUE_URL."""
    queue = fake.sqs.add_queue("render-jobs")
    monkeypatch.setenv("SFN_SQS_QUEUE_URL", queue.url)
    monkeypatch.setenv("SFN_HANDLER", SEED)
    settings = load_settings()
    assert await check(settings, build_runtime(settings, None).configs) == 0
    out = capsys.readouterr().out
    assert f"queue_url          {queue.url} (environment (SFN_SQS_QUEUE_URL))" in out
    assert f"handler            {SEED} (environment (SFN_HANDLER))" in out
    assert "(code)" not in out


# -- flags ------------------------------------------------------------------------------------


def test_a_flag_wins_over_its_variable_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFN_CONCURRENCY", "4")
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    monkeypatch.setenv("SFN_ACTIVITY_ARN", ARN)
    monkeypatch.setenv("SFN_HANDLER", SEED)
    settings = load_settings({"concurrency": "8", "log_level": "debug", "log_format": None})
    assert (settings.concurrency, settings.log_level) == (8, LogLevel.DEBUG)
    assert settings.origin("concurrency") == "flag (--concurrency)"
    assert settings.origin("log_level") == "flag (--log-level)"
    assert settings.origin("log_format") == "default"
    (config,) = build_runtime(settings, None).configs
    assert config.sources["concurrency"] == "flag (--concurrency)"


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--concurrency", "many"], {}, "--concurrency='many' is invalid"),
        (["--concurrency", "0"], {}, "--concurrency='0' is invalid"),
        (
            ["--log-level", "verbose"],
            {},
            "--log-level='verbose' is invalid: expected one of DEBUG, INFO, WARNING, ERROR",
        ),
        (["--log-format", "xml"], {}, "--log-format='xml' is invalid: expected one of json"),
        (["--handler", "no-colon"], {}, "--handler='no-colon' is invalid"),
        (["--handler", "nowhere.at_all:fn"], {}, "--handler='nowhere.at_all:fn': cannot import"),
        (
            ["--concurrency", "2"],
            {"SFN_POLLERS": "4"},
            "SFN_POLLERS (4) must not exceed --concurrency (2)",
        ),
        # The variable a flag overrides is still validated (it breaks the next start).
        (
            ["--concurrency", "3"],
            {"SFN_CONCURRENCY": "abc"},
            "SFN_CONCURRENCY='abc' is invalid",
        ),
        (["--log-level", "debug"], {"LOG_LEVEL": "loud"}, "(even with --log-level given)"),
    ],
)
def test_a_flag_is_validated_as_its_variable_is_and_named_in_the_error(
    flags: list[str], env: dict[str, str], message: str
) -> None:
    base = {"SFN_ACTIVITY_ARN": ARN, "SFN_HANDLER": SEED, **env}
    result = _run_cli("run", *flags, env=base)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert message in line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "--conc", "3"], "unrecognized arguments: --conc"),  # no abbreviations
        (["check", "--log", "debug"], "unrecognized arguments: --log"),
        (["settings", "--bogus"], "unrecognized arguments: --bogus"),
        (["healthcheck", "--timeout", "x"], "argument --timeout: expected seconds"),
        (["nosuch"], "invalid choice: 'nosuch'"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_argument(args: list[str], named: str) -> None:
    result = _run_cli(*args, env={"SFN_ACTIVITY_ARN": ARN, "SFN_HANDLER": SEED})
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert named in line
    assert line.startswith("sfn-worker")


# -- sfn-worker settings ----------------------------------------------------------------------


def test_settings_prints_every_setting_its_value_and_source_without_aws() -> None:
    env = {
        "SFN_ACTIVITY_ARN": ARN,
        "SFN_HEARTBEAT_SECONDS": "5",
        # Nothing to reach and nothing to print: no AWS call is made, no secret shown.
        "AWS_ENDPOINT_URL_SFN": "http://127.0.0.1:9",
        "AWS_ENDPOINT_URL_STS": "http://127.0.0.1:9",
        "AWS_SECRET_ACCESS_KEY": "do-not-print-this-secret",
    }
    result = _run_cli("settings", "--handler", SEED, "--log-level", "debug", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  SFN_")}
    assert set(rows) | {"LOG_LEVEL"} == {env_name(field) for field in Settings.model_fields}
    heartbeat = rows["SFN_HEARTBEAT_SECONDS"].split()[1:]
    assert heartbeat == ["5", "environment", "(SFN_HEARTBEAT_SECONDS)"]
    assert rows["SFN_HANDLER"].split()[1:] == [SEED, "flag", "(--handler)"]
    assert rows["SFN_CONCURRENCY"].split()[1:] == ["16", "default"]
    (level,) = [line for line in out.splitlines() if line.startswith("  LOG_LEVEL")]
    assert level.split()[1:] == ["DEBUG", "flag", "(--log-level)"]
    assert "do-not-print-this-secret" not in out + result.stderr
    assert f"activity '{ARN.rsplit(':', 1)[-1]}':" in out


def test_settings_of_an_app_says_app_code_and_argument() -> None:
    env = {"PYTHONPATH": str(REPO), "SFN_NOTIFY_CONCURRENCY": "7"}
    result = _run_cli("settings", "tests.apps:media", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    (app,) = [line for line in out.splitlines() if line.startswith("  SFN_APP")]
    assert app.split()[1:] == ["tests.apps:media", "argument"]
    assert "concurrency        7 (environment (SFN_NOTIFY_CONCURRENCY))" in out
    assert "(app code)" in out
    assert "arn                - (resolved from the name at start)" in out


# -- help and version -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["SFN_ACTIVITY_ARN", "SFN_HANDLER", "example:", "docs/cli.md", "healthcheck"]),
        (
            ["run"],
            [
                "SFN_ACTIVITY_ARN",
                "SFN_HANDLER",
                "SFN_APP",
                "SFN_CONCURRENCY",
                "--concurrency",
                "--log-level",
                "--log-format",
                "--handler",
                "examples:",
                "docs/cli.md",
                "exit codes",
            ],
        ),
        (["check"], ["SFN_ACTIVITY_ARN", "AWS_REGION", "example:", "docs/cli.md", "exit codes"]),
        (["settings"], ["SFN_HANDLER", "no AWS", "examples:", "docs/cli.md"]),
        (["healthcheck"], ["SFN_HTTP_PORT", "/healthz", "exit codes", "--timeout", "docs/cli.md"]),
    ],
)
def test_help_names_the_variables_an_example_and_what_to_read(
    args: list[str], expected: list[str], capsys: Any
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps some lines
    missing = [text for text in expected if " ".join(text.split()) not in shown]
    assert missing == []


def test_no_command_names_the_commands(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "required: {run,check,settings,healthcheck,dev,once}" in capsys.readouterr().err


def test_version_is_the_package_version(capsys: Any) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"sfn-worker {version('sfn-activity-worker')}"


def test_a_command_is_one_function_in_the_list(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """How another module adds a command (``dev``, say): one ``add_<name>`` function."""
    from sfn_worker import cli

    def add_hello(commands: Any) -> None:
        hello = commands.add_parser("hello", help="say hello")
        hello.set_defaults(command=lambda args, early_signals: print("hello") or 0)

    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, add_hello])
    assert main(["hello"]) == 0
    assert capsys.readouterr().out == "hello\n"


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("def h(i, c):\n    return (\n", "raised SyntaxError: '(' was never closed"),
        ('raise RuntimeError("boom at import")\n', "raised RuntimeError: boom at import"),
    ],
)
def test_a_handler_module_that_fails_at_import_is_one_line_with_its_place(
    tmp_path: Path, source: str, shown: str
) -> None:
    # It was a 30-line traceback of importlib's frames, exit 1.
    (tmp_path / "broken_jobs.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SFN_", "AWS_"))}
    env.update(SFN_ACTIVITY_ARN=ARN, SFN_HANDLER="broken_jobs:h", AWS_REGION="us-east-1")
    result = subprocess.run(
        [str(BIN / "sfn-worker"), "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert shown in result.stderr
    assert f"{tmp_path / 'broken_jobs.py'}, line " in result.stderr
