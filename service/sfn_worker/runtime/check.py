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
from ..source_options import SourceOptions, options, show
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
    """One line per setting (source_options.py): its value and where it came from."""
    sources = config.sources
    lines = [f"handler            {import_path(config.handler)} ({sources['handler']})"]
    lines += [f"{name:<18} {value} ({sources[name]})" for name, value in config.own_settings()]
    for name, _ in options(SourceOptions):
        value = _shown(config, name)
        if value is not None:
            lines.append(f"{name:<18} {value} ({sources[name]})")
    if config.heartbeat_rate_per_second > HEARTBEAT_RATE_WARNING_PER_SECOND:
        lines.append(
            f"WARNING: up to {config.heartbeat_rate_per_second:.0f} heartbeats/s when full; "
            "that is the order of the account's SendTaskHeartbeat quota "
            "(raise SFN_HEARTBEAT_SECONDS or lower SFN_CONCURRENCY)"
        )
    return lines


def _shown(config: SourceConfig, name: str) -> str | None:
    """A shared setting's value as printed; None: it does not apply to this source."""
    value = getattr(config, name)
    if name == "queue_size" and not value:
        return f"0 = pollers ({config.pollers})"
    if name == "max_tasks_per_child":
        if config.handler_mode is not HandlerMode.PROCESS:
            return None  # only handler processes are replaced
        return show(value or "unlimited")
    if name == "processes":
        if config.handler_mode is not HandlerMode.PROCESS:
            return None  # only process mode has handler processes
        shown = show(value or f"0 = one per CPU it may use ({available_cpus()})")
        if (value or available_cpus()) > config.concurrency:  # no more processes than slots
            shown += f", capped at the concurrency ({config.concurrency})"
        return shown
    return show(value)
