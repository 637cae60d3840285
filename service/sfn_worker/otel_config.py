"""Which OTEL_* configurations the worker can run, checked at start without importing
OpenTelemetry: an exporter that is not installed, an OTLP protocol the SDK does not know,
or console output on the stdout that EMF records own is a configuration error (exit 2,
one line naming the variable), not a traceback once tasks are running.

It follows the SDK's own resolution (opentelemetry.sdk._configuration): OTEL_<SIGNAL>_EXPORTER
names entry points of ``opentelemetry_<signal>_exporter``; ``otlp`` becomes
``otlp_proto_<protocol>`` from OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL, else
OTEL_EXPORTER_OTLP_PROTOCOL, which the worker defaults to http/protobuf (otel.py).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from importlib.metadata import entry_points

from .settings import SettingsError
from .tracing import tracing_requested

# What the otel extra ships: OTLP over HTTP; gRPC needs a package of its own.
DEFAULT_PROTOCOL = "http/protobuf"
PROTOCOLS = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
PROTOCOL_PACKAGES = {
    "grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "http/protobuf": "opentelemetry-exporter-otlp-proto-http",
}
SIGNALS = ("traces", "metrics", "logs")


def check_otel_environment(environ: Mapping[str, str], *, emf: bool) -> None:
    """Raise SettingsError naming the variable if the SDK could not start from ``environ``
    (tracing requested and the extra installed; else there is nothing to configure)."""
    if not tracing_requested(environ) or importlib.util.find_spec("opentelemetry.sdk") is None:
        return
    if environ.get("OTEL_CONFIG_FILE"):
        if importlib.util.find_spec("opentelemetry.configuration") is None:
            raise SettingsError(
                "OTEL_CONFIG_FILE is set, but opentelemetry-configuration, which reads it, "
                "is not installed"
            )
        return  # the file configures the SDK, not the variables below
    for signal in SIGNALS:
        _check_exporters(environ, signal, emf=emf)
    generator = environ.get("OTEL_PYTHON_ID_GENERATOR", "").strip()
    if generator and generator not in _installed("opentelemetry_id_generator"):
        raise SettingsError(f"OTEL_PYTHON_ID_GENERATOR={generator!r}: no such ID generator")


def _check_exporters(environ: Mapping[str, str], signal: str, *, emf: bool) -> None:
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    # The worker asks for OTLP traces when only an endpoint is given (otel.configure_sdk).
    names = environ.get(variable, "").strip() or ("otlp" if signal == "traces" else "")
    if names.lower() in ("", "none"):
        return
    installed = _installed(f"opentelemetry_{signal}_exporter")
    for name in (part.strip() for part in names.split(",")):
        if name == "otlp":
            _check_otlp(environ, signal, installed)
        elif name not in installed:
            raise SettingsError(
                f"{variable}={name!r}: no such {signal} exporter is installed "
                f"(installed: {', '.join(sorted({'otlp', *installed}))})"
            )
        elif name == "console" and emf:
            raise SettingsError(
                f"{variable}=console writes to stdout, which SFN_METRICS=emf keeps for its "
                "metric records: export with otlp, or set SFN_METRICS=prometheus"
            )


def _check_otlp(environ: Mapping[str, str], signal: str, installed: set[str]) -> None:
    """``otlp``: the protocol variable picks the exporter."""
    variable = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    if not environ.get(variable):
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = environ.get(variable, "").strip() or DEFAULT_PROTOCOL
    if protocol not in PROTOCOLS:
        raise SettingsError(
            f"{variable}={protocol!r}: not an OTLP protocol (use http/protobuf, or grpc with "
            f"{PROTOCOL_PACKAGES['grpc']} installed)"
        )
    if PROTOCOLS[protocol] not in installed:
        raise SettingsError(
            f"{variable}={protocol!r} needs {PROTOCOL_PACKAGES[protocol]}, which is not "
            "installed (the otel extra ships OTLP over HTTP: http/protobuf)"
        )


def _installed(group: str) -> set[str]:
    return {entry.name for entry in entry_points(group=group)}
