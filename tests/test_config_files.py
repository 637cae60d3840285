"""Operator files in config/ and the Dockerfile agree with the code and with each other."""

from __future__ import annotations

import json
import re
import shlex
import string
from pathlib import Path
from typing import Any

import pytest

from sfn_worker.app import load_app
from sfn_worker.config import ActivityConfig, CallbackQueueConfig, resolve
from sfn_worker.examples import seed_handler
from sfn_worker.settings import HandlerMode, Settings, env_name, load_settings
from sfn_worker.worker import single_app

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config"
SETTING_NAMES = {env_name(name) for name in Settings.model_fields}


def load_json(name: str) -> Any:
    return json.loads((CONFIG / name).read_text())


@pytest.mark.parametrize("path", sorted(CONFIG.rglob("*.json")), ids=lambda p: p.name)
def test_every_json_file_loads(path: Path) -> None:
    assert json.loads(path.read_text())


ENV_EXAMPLE = CONFIG / "worker.env.example"


def env_file_lines(path: Path) -> dict[str, str]:
    """What ``docker run --env-file`` passes: NAME=VALUE lines, verbatim; # starts a comment."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, separator, value = line.partition("=")
            assert separator, f"not NAME=VALUE: {line!r}"
            values[name] = value
    return values


def test_env_example_lists_exactly_the_settings() -> None:
    text = ENV_EXAMPLE.read_text()
    listed = re.findall(r"^#?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE)
    assert len(listed) == len(set(listed)), "a variable is listed twice"
    assert set(listed) == SETTING_NAMES


def test_env_example_shows_only_the_required_values() -> None:
    """Everything set is required (a placeholder to fill); every default is commented out."""
    assert set(env_file_lines(ENV_EXAMPLE)) == {"SFN_ACTIVITY_ARN", "SFN_HANDLER"}


def _field(name: str) -> str:
    return "log_level" if name == "LOG_LEVEL" else name.removeprefix("SFN_").lower()


def test_env_example_commented_defaults_match_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    text = ENV_EXAMPLE.read_text()
    commented = dict(re.findall(r"^#([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.MULTILINE))
    assert commented["SFN_WORKER_NAME"] == ""  # empty = unset: defaults to the hostname
    defaults = Settings()
    for name, value in commented.items():
        if value:
            field = _field(name)
            shown = getattr(load_settings({field: value}), field)
            assert shown == getattr(defaults, field), f"{name}={value} is not the default"
        else:
            assert name in {"SFN_SQS_QUEUE_URL", "SFN_APP", "SFN_POLLERS", "SFN_WORKER_NAME"}


def test_env_example_loaded_verbatim_changes_nothing_but_the_required_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``docker run --env-file config/worker.env.example``: the same settings as none at all
    besides the two required ones, so a @non_blocking handler still runs on the loop (it
    used to set SFN_HANDLER_MODE=thread, which moved such handlers to threads)."""
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    values = env_file_lines(ENV_EXAMPLE)
    defaults = Settings(activity_arn=values["SFN_ACTIVITY_ARN"], handler=values["SFN_HANDLER"])
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    from_file = load_settings()
    assert from_file == defaults
    assert from_file.model_fields_set == {"activity_arn", "handler"}
    (config,) = resolve(single_app(from_file, seed_handler), from_file, values)
    assert config.handler_mode is HandlerMode.ASYNC  # the seed handler is @non_blocking
    assert config.sources["handler_mode"] == "the handler is marked @non_blocking"


def _container() -> dict[str, Any]:
    container: dict[str, Any] = load_json("ecs-task-definition.json")["containerDefinitions"][0]
    return container


def test_ecs_task_definition_fits_grace_into_stop_timeout() -> None:
    container = _container()
    env = {item["name"]: item["value"] for item in container["environment"]}
    assert set(env) <= SETTING_NAMES
    assert env["SFN_HANDLER"] == "sfn_worker.examples:seed_handler"  # named: it is required
    grace = float(env["SFN_SHUTDOWN_GRACE_SECONDS"])
    assert container["stopTimeout"] <= 120  # the ECS maximum
    assert grace + 5 <= container["stopTimeout"]
    assert grace >= 65  # every open long poll returns before the worker exits
    assert container["healthCheck"]["command"] == ["CMD", "sfn-worker", "healthcheck"]
    assert env["SFN_HTTP_PORT"] != "0"  # the health check needs the server
    assert container["logConfiguration"]["logDriver"] == "awslogs"


def test_ecs_app_task_definition_resolves_against_its_app() -> None:
    """Every variable is a setting or a per-activity override of the app it runs."""
    container = load_json("ecs-task-definition-app.json")["containerDefinitions"][0]
    assert container["command"][0] == "run"
    env = {item["name"]: item["value"] for item in container["environment"]}
    settings = Settings(
        **{
            name.removeprefix("SFN_").lower(): value
            for name, value in env.items()
            if name in SETTING_NAMES and name != "LOG_LEVEL"
        }
    )
    app = load_app(container["command"][1])
    resolved = resolve(app, settings, env)
    queues = [c for c in resolved if isinstance(c, CallbackQueueConfig)]
    assert [q.queue_url for q in queues] == [env["SFN_SEED_CALLBACKS_QUEUE_URL"]]
    configs = {c.name: c for c in resolved if isinstance(c, ActivityConfig)}
    assert configs["uppercase"].concurrency == 64
    assert configs["uppercase"].sources["concurrency"] == "environment (SFN_UPPERCASE_CONCURRENCY)"
    assert configs["seed-activity"].arn == env["SFN_SEED_ACTIVITY_ACTIVITY_ARN"]
    grace = float(env["SFN_SHUTDOWN_GRACE_SECONDS"])
    assert grace + 5 <= container["stopTimeout"] <= 120


def test_iam_policy_is_least_privilege() -> None:
    policy = load_json("iam-task-role-policy.json")
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    assert actions == {
        "states:GetActivityTask",
        "states:DescribeActivity",
        "states:SendTaskSuccess",
        "states:SendTaskFailure",
        "states:SendTaskHeartbeat",
        "ecs:UpdateTaskProtection",
        "ecs:GetTaskProtection",
        # Callback queues: exactly what tasks/sources/queue/worker.py calls, on the queue alone.
        "sqs:ReceiveMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "kms:Decrypt",
    }
    for statement in policy["Statement"]:
        if "states:GetActivityTask" in statement["Action"]:
            assert ":activity:" in statement["Resource"]
        if "sqs:ReceiveMessage" in statement["Action"]:
            assert statement["Resource"].startswith("arn:aws:sqs:")


def test_autoscaling_example_uses_the_activity_metrics() -> None:
    scaling = load_json("ecs-service-autoscaling.json")
    metrics = {alarm["MetricName"] for alarm in scaling["Alarms"]}
    assert metrics == {"ActivityScheduleTime", "ActivitiesScheduled"}
    assert all(alarm["Namespace"] == "AWS/States" for alarm in scaling["Alarms"])


def test_ec2_examples_give_the_container_its_stop_time() -> None:
    unit = (CONFIG / "ec2" / "sfn-worker.service").read_text()
    grace = float(re.search(r"SFN_SHUTDOWN_GRACE_SECONDS=(\d+)", unit).group(1))  # type: ignore[union-attr]
    docker_stop = int(re.search(r"--stop-timeout (\d+)", unit).group(1))  # type: ignore[union-attr]
    systemd_stop = int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1))  # type: ignore[union-attr]
    assert grace < docker_stop < systemd_stop
    script = (CONFIG / "ec2" / "run.sh").read_text()
    assert "--stop-timeout 120" in script
    assert "SFN_SHUTDOWN_GRACE_SECONDS=110" in script


def dockerfile_instructions(path: Path = REPO / "Dockerfile") -> dict[str, list[str]]:
    text = path.read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.setdefault(keyword.upper(), []).append(rest.strip())
    return found


def image_command() -> list[str]:
    """ENTRYPOINT + CMD of the final stage, both in exec form."""
    instructions = dockerfile_instructions()
    entrypoint: list[str] = json.loads(instructions["ENTRYPOINT"][-1])
    cmd: list[str] = json.loads(instructions["CMD"][-1])
    return entrypoint + cmd


def image_env(path: Path = REPO / "Dockerfile") -> dict[str, str]:
    env: dict[str, str] = {}
    for declaration in dockerfile_instructions(path)["ENV"][-1:]:
        for pair in shlex.split(declaration):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def dockerfile_args(path: Path = REPO / "Dockerfile") -> dict[str, str]:
    """Every ``ARG NAME=default`` of the Dockerfile."""
    args: dict[str, str] = {}
    for declaration in dockerfile_instructions(path).get("ARG", []):
        name, _, default = declaration.partition("=")
        args[name] = default
    return args


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    base = string.Template(instructions["FROM"][-1]).substitute(dockerfile_args())
    assert base.startswith("python:3.13-slim")
    assert re.fullmatch(r"python:3\.13-slim@sha256:[0-9a-f]{64}", base), "pinned by digest"
    assert len(instructions["FROM"]) >= 2, "multi-stage build"
    assert image_command() == ["sfn-worker", "run"]
    # The base image guesses no handler: the operator or an image FROM it names one.
    assert not {"SFN_HANDLER", "SFN_APP", "SFN_ACTIVITY_ARN"} & set(image_env())
    assert instructions["STOPSIGNAL"] == ["SIGTERM"]
    assert re.fullmatch(r"\d+(:\d+)?", instructions["USER"][-1]), "numeric non-root user"
    assert not instructions["USER"][-1].startswith("0")
    assert "sfn-worker" in instructions["HEALTHCHECK"][-1]
    assert "--require-hashes" in " ".join(instructions["RUN"])
    assert "requirements.lock" in " ".join(instructions["COPY"])
    ignored = (REPO / ".dockerignore").read_text()
    assert ignored.splitlines()[1] == "*"


CUSTOM_IMAGE = REPO / "examples" / "custom-image"


def test_the_custom_image_builds_from_ours_and_runs_as_its_user() -> None:
    text = (CUSTOM_IMAGE / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE}"]
    assert "ARG BASE_IMAGE=sfn-activity-worker:latest" in lines
    users = [line for line in lines if line.startswith("USER ")]
    assert users[-1] == f"USER {dockerfile_instructions()['USER'][-1]}"  # not root at run time
    assert not any(line.startswith(("ENTRYPOINT", "CMD")) for line in lines)  # ours
    handler = re.search(r"SFN_HANDLER=(\S+)", text)
    assert handler is not None
    module, _, function = handler.group(1).partition(":")
    source = (CUSTOM_IMAGE / (module.replace(".", "/") + ".py")).read_text()
    assert f"def {function}(" in source


def test_the_custom_image_pins_what_its_tests_ran_with() -> None:
    from importlib.metadata import version

    pins = dict(
        line.split("==")
        for line in (CUSTOM_IMAGE / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins == {"humanize": version("humanize")}


def test_make_image_tags_what_the_custom_image_builds_from() -> None:
    """`make image` tagged only :<version>; the example's default base is :latest."""
    (default,) = re.findall(
        r"^ARG BASE_IMAGE=(\S+)$", (CUSTOM_IMAGE / "Dockerfile").read_text(), re.M
    )
    recipe = (REPO / "Makefile").read_text().split("\nimage:\n", 1)[1].split("\n\n", 1)[0]
    tags = re.findall(r"-t (\S+)", recipe)
    assert default in tags
    assert "sfn-activity-worker:$(VERSION)" in tags
