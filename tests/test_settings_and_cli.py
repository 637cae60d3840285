"""Settings validation and the command line: clear errors, exit codes, ``check``."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from sfn_worker.cli import build_runtime, main
from sfn_worker.config import ActivityConfig
from sfn_worker.runtime.check import check
from sfn_worker.runtime.shutdown import failure_reserve_seconds
from sfn_worker.settings import HandlerMode, SettingsError, load_settings
from sfn_worker.testing import DEFAULT_ACTIVITY_ARN, FakeStepFunctions

ARN = DEFAULT_ACTIVITY_ARN


def activity_from_env() -> ActivityConfig:
    """The single activity's settings, as ``sfn-worker run`` would resolve them."""
    config = build_runtime(load_settings(), None).configs[0]
    assert isinstance(config, ActivityConfig)
    return config


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFN_ACTIVITY_ARN", ARN)
    settings = load_settings()
    activity = activity_from_env()
    assert settings.handler == "sfn_worker.examples:seed_handler"
    assert (activity.pollers, activity.concurrency, activity.effective_queue_size) == (4, 16, 4)
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
    monkeypatch.setenv("SFN_HANDLER_MODE", mode)
    activity = activity_from_env()
    assert activity.handler_mode is HandlerMode(mode)
    assert activity.sources["handler_mode"] == "environment (SFN_HANDLER_MODE)"


def test_non_blocking_says_where_the_mode_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFN_ACTIVITY_ARN", ARN)
    assert activity_from_env().sources["handler_mode"] == "the handler is marked @non_blocking"


def test_a_default_poller_count_is_capped_at_the_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SFN_ACTIVITY_ARN", ARN)
    monkeypatch.setenv("SFN_CONCURRENCY", "2")  # refused before: the default SFN_POLLERS is 4
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
        ({"SFN_ACTIVITY_ARN": ARN, "LOG_LEVEL": "loud"}, "LOG_LEVEL='LOUD' is invalid"),
        ({"SFN_ACTIVITY_ARN": ARN, "SFN_HEARTBEAT_SECONDS": "-1"}, "SFN_HEARTBEAT_SECONDS"),
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
        ({"SFN_ACTIVITY_ARN": ARN, "SFN_POLLERS": "abc"}, "SFN_POLLERS='abc' is invalid"),
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
    env = {"SFN_ACTIVITY_ARN": ARN, "AWS_REGION": "", "AWS_DEFAULT_REGION": ""}
    result = _run_cli("check", env=env)
    assert result.returncode == 2
    assert "AWS_REGION" in result.stderr


def _run_cli_with_no_credentials(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    """No credentials anywhere in the chain: no keys, files, container or instance role."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SFN_", "AWS_"))}
    clean.update(
        SFN_ACTIVITY_ARN=ARN,
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
                "SFN_HTTP_PORT": str(port),
                "SFN_HTTP_HOST": "127.0.0.1",
            },
        )
    assert result.returncode == 2
    assert f"SFN_HTTP_PORT={port}: cannot listen" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
