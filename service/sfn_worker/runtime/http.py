"""Optional HTTP server (SFN_HTTP_PORT): /healthz for orchestrators, /metrics for Prometheus."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST

from ..settings import Settings, SettingsError

if TYPE_CHECKING:
    from aiohttp import web

    from .runtime import Runtime


# A loop that was blocked this long at its last sample cannot poll or heartbeat in time.
LOOP_LAG_UNHEALTHY_SECONDS = 5.0


def too_many_stuck(stuck: int, concurrency: int) -> bool:
    """Handlers that ignored cancellation hold more than half the slots: the worker can
    no longer do what it is sized for, and only a new container gives the slots back."""
    return stuck * 2 > concurrency


def make_app(runtime: Runtime) -> web.Application:
    # aiohttp's server modules (about 2.4 MiB) are loaded only when the port is on.
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        state = runtime.state()
        loop_lag = runtime.metrics.last_loop_lag
        groups: dict[str, dict[str, object]] = {"activities": {}, "queues": {}}
        healthy = state.polling and loop_lag < LOOP_LAG_UNHEALTHY_SECONDS
        for source in state.sources:
            healthy = (
                healthy
                and source.pollers_alive == source.pollers
                and not too_many_stuck(source.handlers_stuck, source.concurrency)
            )
            group = groups["activities" if source.kind == "activity" else "queues"]
            group[source.name] = {
                k: v
                for k, v in dataclasses.asdict(source).items()
                if v is not None and k not in ("kind", "name")
            }
        body: dict[str, object] = {
            "status": "ok" if healthy else ("stopping" if state.stopping else "unhealthy"),
            "loop_lag_seconds": round(loop_lag, 3),
            "running": sum(s.running for s in state.sources),
            **{name: group for name, group in groups.items() if group},
        }
        if state.accessories:
            # Shown, never a reason to be unhealthy: tasks run without them.
            body["accessories"] = {
                name: {k: v for k, v in dataclasses.asdict(a).items() if v is not None}
                for name, a in state.accessories.items()
            }
        return web.json_response(body, status=200 if healthy else 503)

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=runtime.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


@contextlib.asynccontextmanager
async def serve_http(settings: Settings, runtime: Runtime) -> AsyncIterator[int | None]:
    """Serve while the block runs; yields the bound port (None when SFN_HTTP_PORT is 0)."""
    if not settings.http_port:
        yield None
        return
    from aiohttp import web

    runner = web.AppRunner(make_app(runtime), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        try:
            await site.start()
        except OSError as exc:
            raise SettingsError(
                f"SFN_HTTP_PORT={settings.http_port}: cannot listen on "
                f"{settings.http_host}:{settings.http_port}: {exc.strerror or exc}"
            ) from None
        yield settings.http_port
    finally:
        await runner.cleanup()


def healthcheck(timeout: float) -> int:
    """For Docker HEALTHCHECK / ECS: exit 0 when /healthz answers 200."""
    port = os.environ.get("SFN_HTTP_PORT", "0")
    if not port.isdigit() or int(port) == 0:
        print(
            "sfn-worker healthcheck: SFN_HTTP_PORT is not set; the health server is off",
            file=sys.stderr,
        )
        return 1
    url = f"http://127.0.0.1:{int(port)}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            print(json.dumps(json.load(answer)))
            return 0
    except urllib.error.HTTPError as exc:
        print(
            f"sfn-worker healthcheck: {exc.code} {exc.read().decode(errors='replace')}",
            file=sys.stderr,
        )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"sfn-worker healthcheck: {url} unreachable: {exc}", file=sys.stderr)
    return 1
