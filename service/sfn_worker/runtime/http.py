"""Optional HTTP server (SFN_HTTP_PORT): /healthz for orchestrators, /metrics for Prometheus."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import TypeAdapter, ValidationError

from ..settings import HttpPort, Settings, SettingsError
from .httpserver import GuardedServer, Handler, Response

if TYPE_CHECKING:
    from .runtime import Runtime


HTTP_PORT: TypeAdapter[int] = TypeAdapter(HttpPort)

# A loop that was blocked this long at its last sample cannot poll or heartbeat in time.
LOOP_LAG_UNHEALTHY_SECONDS = 5.0


def health(runtime: Runtime) -> tuple[int, dict[str, object]]:
    """/healthz: 200 while polling with every source healthy (as its kind judges: an
    activity or a queue with every poller alive and no more than half its slots held by
    handlers that ignored cancellation; a ``once`` source while it holds or has answered its
    task) and the loop responsive; 503 otherwise. Every source is listed under ``sources``
    by name, its kind a field."""
    state = runtime.state()
    loop_lag = runtime.metrics.last_loop_lag
    healthy = state.polling and loop_lag < LOOP_LAG_UNHEALTHY_SECONDS
    sources: dict[str, object] = {}
    groups: dict[str, dict[str, object]] = {}
    for name, source in state.by_name():
        healthy = healthy and source.healthy
        shown = {
            k: v
            for k, v in dataclasses.asdict(source).items()
            if v is not None and k not in ("name", "group")
        }
        sources[name] = shown
        if source.group is not None:
            groups.setdefault(source.group, {})[source.name] = shown
    body: dict[str, object] = {
        "status": "ok" if healthy else ("stopping" if state.stopping else "unhealthy"),
        "loop_lag_seconds": round(loop_lag, 3),
        "running": sum(s.running for s in state.sources),
        "sources": sources,
        **groups,
    }
    if state.accessories:
        # Shown, never a reason to be unhealthy: tasks run without them.
        body["accessories"] = {
            name: {k: v for k, v in dataclasses.asdict(a).items() if v is not None}
            for name, a in state.accessories.items()
        }
    return (200 if healthy else 503), body


def routes(runtime: Runtime) -> dict[str, Handler]:
    async def healthz() -> Response:
        status, body = health(runtime)
        return Response(status, json.dumps(body).encode())

    async def metrics() -> Response:
        return Response(200, runtime.metrics.render(), CONTENT_TYPE_LATEST)

    return {"/healthz": healthz, "/metrics": metrics}


@contextlib.asynccontextmanager
async def serve_http(settings: Settings, runtime: Runtime) -> AsyncIterator[int | None]:
    """Serve while the block runs; yields the bound port (None when SFN_HTTP_PORT is 0)."""
    if not settings.http_port:
        yield None
        return
    server = GuardedServer(routes(runtime))
    try:
        await server.start(settings.http_host, settings.http_port)
    except OSError as exc:
        # A name that does not resolve, or an address not on this machine: the host's fault;
        # in use, or a privileged port: the port's.
        host_is_the_cause = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
        name = (
            f"SFN_HTTP_HOST={settings.http_host!r}"
            if host_is_the_cause
            else f"SFN_HTTP_PORT={settings.http_port}"
        )
        raise SettingsError(
            f"{name}: cannot listen on {settings.http_host}:{settings.http_port}: "
            f"{exc.strerror or exc}"
        ) from None
    try:
        yield settings.http_port
    finally:
        await server.close()


def probe_url(environ: Mapping[str, str]) -> str:
    """The /healthz URL of the worker these variables configure, read as the worker reads
    them (HttpPort: ``" 8080"`` is 8080): its port, on loopback unless SFN_HTTP_HOST names
    one address (``::`` binds IPv6 only, so ``::1``). ValueError says what is wrong."""
    raw = environ.get("SFN_HTTP_PORT", "")
    try:
        port = HTTP_PORT.validate_python(raw.strip() or "0")
    except ValidationError:
        raise ValueError(f"SFN_HTTP_PORT={raw!r} is not a port (0-65535)") from None
    if port == 0:
        raise ValueError("SFN_HTTP_PORT is not set (or 0); the health server is off")
    host = environ.get("SFN_HTTP_HOST", "").strip()
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"


# The probe goes straight to the worker: an HTTP_PROXY set for the handlers' own calls
# would send it to the proxy, and a healthy worker would be reported unreachable.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def healthcheck(timeout: float) -> int:
    """For Docker HEALTHCHECK / ECS: exit 0 when /healthz answers 200."""
    try:
        url = probe_url(os.environ)
    except ValueError as exc:
        print(f"sfn-worker healthcheck: {exc}", file=sys.stderr)
        return 1
    try:
        with _DIRECT.open(url, timeout=timeout) as answer:
            print(json.dumps(json.load(answer)))
            return 0
    except urllib.error.HTTPError as exc:
        print(
            f"sfn-worker healthcheck: {exc.code} {exc.read().decode(errors='replace')}",
            file=sys.stderr,
        )
    except (urllib.error.URLError, OSError, ValueError, OverflowError) as exc:
        print(f"sfn-worker healthcheck: {url} unreachable: {exc}", file=sys.stderr)
    return 1
