"""AWS credentials: waited for at start, refreshed ahead of their expiry in the background.

At start. botocore resolves credentials when the first client is created. On ECS the
agent's credentials endpoint may not be ready in a container's first seconds (404, a body
that is not JSON, 500); that used to end the worker with a long traceback. Here a failed
resolution is retried with backoff for up to SFN_CREDENTIALS_WAIT_SECONDS, then the worker
stops with one line (exit 1); finding no credentials at all is said at once.

While running. Temporary credentials (task role, instance profile, web identity) expire,
and botocore refreshes them inside whichever API call first notices: the first call within
15 minutes of the expiry waits for the refresh, and within 10 minutes every call does. With
the credentials endpoint slow or unreachable, heartbeats stopped and tasks timed out. Here
an accessory refreshes them from REFRESH_AHEAD_SECONDS before the expiry, retrying with
backoff, and calls refresh by themselves only in the last INLINE_REFRESH_SECONDS, if the
background could not. botocore has no public way to refresh ahead: the refresh below uses
its RefreshableCredentials' own refresh under its own lock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError

from ..aws_errors import API_ERRORS, classify
from ..bulkhead import Accessory
from ..exceptions import FatalWorkerError
from ..redact import describe
from ..retry import Again, Backoff, Retry, retrying

log = structlog.get_logger("sfn_worker.credentials")

START_BACKOFF = Backoff(base_seconds=0.5, cap_seconds=5.0)
REFRESH_AHEAD_SECONDS = 15 * 60.0  # botocore's own advisory window
# Calls refresh by themselves only this close to the expiry (botocore: 15 and 10 minutes).
INLINE_REFRESH_SECONDS = 60.0
INLINE_MANDATORY_SECONDS = 30.0
CHECK_SECONDS = 30.0
REFRESH_TIMEOUT_SECONDS = 30.0
REFRESH_BACKOFF = Backoff(base_seconds=5.0, cap_seconds=60.0)
# A provider that cannot give credentials now: its endpoint down, not ready, answering junk.
RESOLUTION_ERRORS: tuple[type[BaseException], ...] = (*API_ERRORS, BotoCoreError, ValueError)
REFRESH_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, RuntimeError, *RESOLUTION_ERRORS)
NO_CREDENTIALS = (
    "no AWS credentials found (environment, shared files, ECS task role, instance profile): "
    "give the task or instance a role, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
)


async def wait_for_credentials(session: Any, wait_seconds: float) -> Any:
    """The session's credentials, resolved now; a provider that fails (its endpoint not
    ready yet) is tried again with backoff for ``wait_seconds``. FatalWorkerError after
    that, or at once when no provider has credentials."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + wait_seconds
    failures = 0

    async def resolve() -> Any:
        credentials = await session.get_credentials()
        if credentials is None:
            raise FatalWorkerError(NO_CREDENTIALS)
        if failures:
            log.info("AWS credentials available", after_attempts=failures + 1)
        return credentials

    def before_wait(exc: BaseException, delay: float, retry: Retry) -> None:
        if loop.time() + delay > give_up_at:
            raise FatalWorkerError(
                f"cannot get AWS credentials: {describe(exc)} (tried for {wait_seconds:g} s; "
                "SFN_CREDENTIALS_WAIT_SECONDS sets how long)"
            ) from None

    def on_retry(exc: BaseException, delay: float, retry: Retry) -> None:
        nonlocal failures
        if retry.failures == 0:
            log.warning(
                "AWS credentials not available yet; retrying",
                error=describe(exc),
                kind=classify(exc).value,
                for_seconds=wait_seconds,
            )
        failures = retry.failures + 1

    return await retrying(
        resolve,
        backoff=START_BACKOFF,
        judge=lambda exc: Again.AFTER_BACKOFF,  # any provider may heal: the deadline decides
        before_wait=before_wait,
        on_retry=on_retry,
        errors=RESOLUTION_ERRORS,
    )


def refreshes_ahead(credentials: Any) -> bool:
    """Whether these credentials expire and can be refreshed in the background."""
    return callable(getattr(credentials, "refresh_needed", None)) and callable(
        getattr(credentials, "_protected_refresh", None)
    )


async def keep_fresh(credentials: Any, accessory: Accessory) -> None:
    """Refresh ``credentials`` ahead of their expiry until cancelled (an accessory)."""
    # From now on a call refreshes them itself only in the last minute.
    credentials._advisory_refresh_timeout = INLINE_REFRESH_SECONDS
    credentials._mandatory_refresh_timeout = INLINE_MANDATORY_SECONDS
    retry = Retry(REFRESH_BACKOFF)
    while True:
        if not credentials.refresh_needed(REFRESH_AHEAD_SECONDS):
            retry.reset()
            await asyncio.sleep(CHECK_SECONDS)
            continue
        if await _refresh(credentials):
            accessory.recovered()
            retry.reset()
            log.info("AWS credentials refreshed ahead of their expiry")
            continue
        delay = retry.next_delay()
        accessory.failed(
            "could not refresh the AWS credentials ahead of their expiry (calls go on with "
            "the current ones)",
            retry_in=round(delay, 1),
        )
        await retry.wait(delay)


async def _refresh(credentials: Any) -> bool:
    """One refresh under the credentials' own lock (calls meanwhile use the current ones)."""
    async with credentials._refresh_lock:
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_SECONDS):
                # Advisory: a failure keeps the current credentials (botocore logs it).
                await credentials._protected_refresh(is_mandatory=False)
        except REFRESH_ERRORS:
            return False
    return not credentials.refresh_needed(REFRESH_AHEAD_SECONDS)
