"""``sfn-worker settings``: every effective setting, its value and where it came from,
without calling AWS."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import SourceConfig
from ..settings import Settings, env_name
from ..source_options import show
from .check import describe_config


def settings_lines(settings: Settings, app: tuple[str, str] | None) -> list[str]:
    """One line per process-wide setting: variable, value, source. ``app``: the app's path
    and where it was given (the argument or SFN_APP), None in the single form."""
    rows: list[tuple[str, str, str]] = []
    for field in Settings.model_fields:
        name = env_name(field)
        if field == "app" and app is not None:
            rows.append((name, app[0], app[1]))
            continue
        rows.append((name, show(getattr(settings, field)), settings.origin(field)))
    rows.insert(0, ("variable", "value", "source"))
    width = max(len(name) for name, _, _ in rows)
    value_width = min(24, max(len(value) for _, value, _ in rows))
    return [f"  {name:<{width}}  {value:<{value_width}}  {origin}" for name, value, origin in rows]


def print_settings(
    settings: Settings, app: tuple[str, str] | None, configs: Sequence[SourceConfig]
) -> int:
    print("process settings:")
    for line in settings_lines(settings, app):
        print(line)
    for config in configs:
        print(f"{config.kind} {config.name!r}:")
        for line in describe_config(config):
            print(f"  {line}")
    return 0
