"""``sfn-worker check``: every activity exists, and what each one will run with, and why."""

from __future__ import annotations

import sys

from ..app import import_path
from ..config import ActivityConfig
from ..errors import API_ERRORS, FatalWorkerError, describe
from ..settings import HEARTBEAT_RATE_WARNING_PER_SECOND, HandlerMode, Settings
from .client import open_clients
from .names import resolve_names

EXIT_OK = 0
EXIT_FAILURE = 1


async def check(settings: Settings, configs: list[ActivityConfig]) -> int:
    """Validate credentials, DescribeActivity each activity, print its effective settings."""
    failed = 0
    async with open_clients(configs) as clients:
        try:
            configs = await resolve_names(configs, clients.session, clients.endpoint_url)
        except FatalWorkerError as exc:
            print(f"sfn-worker check: FAILED: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        for config in configs:
            try:
                await clients.calls.describe_activity(activityArn=str(config.arn))
            except API_ERRORS as exc:
                failed += 1
                print(
                    f"sfn-worker check: FAILED: activity {config.name!r} ({config.arn}): "
                    f"{describe(exc)}",
                    file=sys.stderr,
                )
                continue
            print(f"sfn-worker check: OK: activity {config.name!r} exists ({config.arn})")
            for line in describe_config(config):
                print(f"  {line}")
    print(
        f"process: worker name {settings.worker_name!r}, "
        f"grace {settings.shutdown_grace_seconds:g}s, {len(configs)} activit"
        + ("y" if len(configs) == 1 else "ies")
    )
    return EXIT_FAILURE if failed else EXIT_OK


def describe_config(config: ActivityConfig) -> list[str]:
    """One line per setting: its value and where it came from."""
    sources = config.sources
    queue = config.queue_size or f"0 = pollers ({config.pollers})"
    lines = [
        f"handler            {import_path(config.handler)}",
        f"arn                {config.arn} ({sources['arn']})",
        f"handler_mode       {config.handler_mode.value} ({sources['handler_mode']})",
        f"concurrency        {config.concurrency} ({sources['concurrency']})",
        f"pollers            {config.pollers} ({sources['pollers']})",
        f"queue_size         {queue} ({sources['queue_size']})",
        f"heartbeat_seconds  {config.heartbeat_seconds:g} ({sources['heartbeat_seconds']})",
        f"heartbeat_mode     {config.heartbeat_mode.value} ({sources['heartbeat_mode']})",
    ]
    if config.handler_mode is HandlerMode.PROCESS:
        lines.append(
            f"max_tasks_per_child {config.max_tasks_per_child or 'unlimited'} "
            f"({sources['max_tasks_per_child']})"
        )
    if config.heartbeat_rate_per_second > HEARTBEAT_RATE_WARNING_PER_SECOND:
        lines.append(
            f"WARNING: up to {config.heartbeat_rate_per_second:.0f} heartbeats/s when full; "
            "that is the order of the account's SendTaskHeartbeat quota "
            "(raise SFN_HEARTBEAT_SECONDS or lower SFN_CONCURRENCY)"
        )
    return lines
