"""``sfn-worker check``: every activity exists, and what each one will run with, and why."""

from __future__ import annotations

import sys

from ..app import import_path
from ..aws_errors import API_ERRORS
from ..config import SourceConfig
from ..exceptions import FatalWorkerError
from ..exit_codes import EXIT_FAILURE, EXIT_OK
from ..redact import describe
from ..settings import HEARTBEAT_RATE_WARNING_PER_SECOND, HandlerMode, Settings
from ..tasks.handlers.cpus import available_cpus
from ..tasks.kinds import worker_class
from .client import SfnClients, open_clients
from .names import resolve_names


async def check(settings: Settings, configs: list[SourceConfig]) -> int:
    """Validate credentials; DescribeActivity each activity, GetQueueAttributes each callback
    queue; print each one's effective settings and where they came from."""
    try:
        async with open_clients(configs) as clients:
            return await _check_sources(settings, configs, clients)
    except FatalWorkerError as exc:  # no credentials, or a name that does not resolve
        print(f"sfn-worker check: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILURE


async def _check_sources(
    settings: Settings, configs: list[SourceConfig], clients: SfnClients
) -> int:
    failed = 0
    configs = await resolve_names(configs, clients.session, clients.endpoint_url)
    for config in configs:
        where = config.address
        try:
            notes = await worker_class(config).probe(config, clients.calls, clients.sqs)
        except API_ERRORS as exc:
            failed += 1
            print(
                f"sfn-worker check: FAILED: {config.kind} {config.name!r} ({where}): "
                f"{describe(exc)}",
                file=sys.stderr,
            )
            continue
        print(f"sfn-worker check: OK: {config.kind} {config.name!r} exists ({where})")
        for line in [*describe_config(config), *notes]:
            print(f"  {line}")
    print(
        f"process: worker name {settings.worker_name!r}, "
        f"grace {settings.shutdown_grace_seconds:g}s, {len(configs)} source"
        + ("" if len(configs) == 1 else "s")
    )
    return EXIT_FAILURE if failed else EXIT_OK


def describe_config(config: SourceConfig) -> list[str]:
    """One line per setting: its value and where it came from."""
    sources = config.sources
    queue = config.queue_size or f"0 = pollers ({config.pollers})"
    lines = [f"handler            {import_path(config.handler)} ({sources['handler']})"]
    lines += [f"{name:<18} {value} ({sources[name]})" for name, value in config.own_settings()]
    lines += [
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
        processes = config.processes or f"0 = one per CPU it may use ({available_cpus()})"
        lines.append(f"processes          {processes} ({sources['processes']})")
    if config.heartbeat_rate_per_second > HEARTBEAT_RATE_WARNING_PER_SECOND:
        lines.append(
            f"WARNING: up to {config.heartbeat_rate_per_second:.0f} heartbeats/s when full; "
            "that is the order of the account's SendTaskHeartbeat quota "
            "(raise SFN_HEARTBEAT_SECONDS or lower SFN_CONCURRENCY)"
        )
    return lines
