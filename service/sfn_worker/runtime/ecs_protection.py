"""ECS task scale-in protection: protect the task while any activity task is in flight.

Uses the container agent endpoint ``$ECS_AGENT_URI/task-protection/v1/state``. Protection
is set when the first task starts, renewed before it expires while work goes on, and
cleared when the worker goes idle, so service autoscaling never stops a busy worker. An
accessory (bulkhead.py): agent errors are logged once, counted, shown in /healthz and
retried later, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable

import aiohttp
import structlog

from ..aio import cancel_and_wait
from ..bulkhead import Accessories, Accessory
from ..settings import Settings

log = structlog.get_logger("sfn_worker.ecs_protection")

# Renew when this fraction of the protection period has passed.
RENEW_FRACTION = 0.8
RETRY_AFTER_ERROR_SECONDS = 15.0
AGENT_TIMEOUT_SECONDS = 5.0


class TaskProtection:
    def __init__(
        self,
        agent_uri: str,
        minutes: int,
        busy_count: Callable[[], int],
        changed: asyncio.Event,
        accessory: Accessory,
    ) -> None:
        self._accessory = accessory
        self._url = agent_uri.rstrip("/") + "/task-protection/v1/state"
        self._minutes = minutes
        self._busy_count = busy_count
        self._changed = changed
        self.protected = False

    async def run(self) -> None:
        """Follow the in-flight count until cancelled; clear protection on the way out."""
        timeout = aiohttp.ClientTimeout(total=AGENT_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                await self._follow(session)
            finally:
                if self.protected:
                    # Best effort on the way out; the agent also expires it.
                    await asyncio.shield(self._put(session, enabled=False))

    async def _follow(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        renew_at = 0.0
        while True:
            self._changed.clear()
            busy = self._busy_count() > 0
            wait: float | None = None
            if busy and (not self.protected or loop.time() >= renew_at):
                if await self._put(session, enabled=True):
                    renew_at = loop.time() + self._minutes * 60 * RENEW_FRACTION
                else:
                    renew_at = loop.time() + RETRY_AFTER_ERROR_SECONDS
            elif not busy and self.protected and not await self._put(session, enabled=False):
                wait = RETRY_AFTER_ERROR_SECONDS
            if busy:
                wait = max(0.0, renew_at - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)

    async def _put(self, session: aiohttp.ClientSession, *, enabled: bool) -> bool:
        body: dict[str, object] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = self._minutes
        try:
            async with session.put(self._url, json=body) as response:
                text = await response.text()
                if response.status >= 300:
                    self._accessory.failed(
                        f"the ECS agent refused it: {response.status} {text[:300]}",
                        enabled=enabled,
                    )
                    return False
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._accessory.failed(exc, enabled=enabled)
            return False
        self._accessory.recovered()
        self.protected = enabled
        log.info(
            "ECS task protection " + ("set" if enabled else "cleared"),
            expires_in_minutes=self._minutes if enabled else None,
        )
        return True


@contextlib.asynccontextmanager
async def task_protection(
    settings: Settings,
    busy_count: Callable[[], int],
    changed: asyncio.Event,
    accessories: Accessories,
) -> AsyncIterator[TaskProtection | None]:
    agent_uri = os.environ.get("ECS_AGENT_URI", "")
    if not settings.ecs_task_protection:
        yield None
        return
    if not agent_uri:
        log.warning("SFN_ECS_TASK_PROTECTION is on but ECS_AGENT_URI is not set; protection is off")
        yield None
        return
    protection = TaskProtection(
        agent_uri,
        settings.ecs_protection_minutes,
        busy_count,
        changed,
        accessories.get("ecs_protection"),
    )
    runner = asyncio.create_task(protection.run())
    try:
        yield protection
    finally:
        await cancel_and_wait(runner)
