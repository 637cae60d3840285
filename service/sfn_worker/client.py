"""The one Step Functions client the worker shares between pollers, heartbeats and senders."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import aioboto3
import botocore
from aiobotocore.config import AioConfig
from botocore.exceptions import NoRegionError

from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from types_aiobotocore_stepfunctions import SFNClient as SFNClient
else:
    SFNClient = object


def _package_version() -> str:
    try:
        return version("sfn-activity-worker")
    except PackageNotFoundError:
        return "0"


# GetActivityTask holds the request open for up to 60 s: the read timeout must outlast it,
# or the SDK gives up on a poll the service may already have handed a task to.
LONG_POLL_READ_TIMEOUT_SECONDS = 70.0
CONNECT_TIMEOUT_SECONDS = 10.0
USER_AGENT = (
    f"sfn-activity-worker/{_package_version()} Botocore/{botocore.__version__} "
    f"Python/{platform.python_version()} {platform.system()}/{platform.release()}"
)
NO_REGION = "no AWS region configured: set AWS_REGION (or AWS_DEFAULT_REGION)"


def client_config(settings: Settings) -> AioConfig:
    return AioConfig(
        read_timeout=LONG_POLL_READ_TIMEOUT_SECONDS,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        # Every poller and every task slot may hold a connection at once (polls, heartbeats,
        # terminal calls); a smaller pool would make heartbeats wait behind long polls.
        max_pool_connections=settings.pollers + settings.concurrency + 2,
        # The worker retries itself: it must know whether an earlier attempt of a terminal
        # call may have been recorded, and a poll must never be retried behind its back.
        retries={"total_max_attempts": 1, "mode": "standard"},
        # Requests are built by this package and validated by the service.
        parameter_validation=False,
        # A fixed User-Agent: botocore otherwise rebuilds it twice per request, which
        # costs about a quarter of the CPU of a poll-and-answer cycle.
        user_agent=USER_AGENT,
    )


@contextlib.asynccontextmanager
async def open_client(settings: Settings) -> AsyncIterator[SFNClient]:
    """Region, credentials and endpoint (AWS_ENDPOINT_URL_SFN) come from the AWS chain."""
    # botocore reads AWS_DEFAULT_REGION; ECS, Lambda and the other SDKs set AWS_REGION.
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    session = aioboto3.Session(region_name=region)
    if not session.region_name:
        raise SettingsError(NO_REGION)
    async with contextlib.AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(
                session.client("stepfunctions", config=client_config(settings))
            )
        except NoRegionError:
            raise SettingsError(NO_REGION) from None
        yield client
