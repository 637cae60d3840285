"""Sources named without their full address (activities registered by name) get it at start.

``arn:<partition>:states:<region>:<account>:activity:<name>``: the region of the AWS
configuration, its partition, and the account of the credentials, from STS
GetCallerIdentity (which needs no IAM permission). SFN_<KEY>_ACTIVITY_ARN overrides it.
Which sources need it, and how, is their kind's (``SourceWorker.needs_place``/``placed``).
"""

from __future__ import annotations

from collections.abc import Sequence

import aioboto3
import structlog

from ..aws_errors import ErrorKind, classify
from ..config import SourceConfig, check_distinct
from ..exceptions import FatalWorkerError
from ..redact import describe
from ..retry import SEND_BACKOFF, Again, Retry, Stop, retrying
from ..tasks.kinds import worker_class
from ..tasks.source_worker import Place
from .client import (
    CALL_TIMEOUT_MAX_SECONDS,
    SPARE_CONNECTIONS,
    bound_calls,
    call_config,
    overall_deadline,
    without_proxy,
)

log = structlog.get_logger("sfn_worker.names")

ATTEMPTS = 5


async def resolve_names(
    sources: Sequence[SourceConfig],
    session: aioboto3.Session,
    endpoint_url: str | None,
    direct: bool = False,
) -> list[SourceConfig]:
    """The sources, each with its address (``direct``: STS through no proxy)."""
    if not any(worker_class(s).needs_place(s) for s in sources):
        return list(sources)
    account = await _account(session, endpoint_url, direct)
    region = session.region_name
    place = Place(session.get_partition_for_region(region), region, account)
    resolved: list[SourceConfig] = []
    for source in sources:
        if worker_class(source).needs_place(source):
            source = worker_class(source).placed(source, place)
            log.info(
                "name resolved",
                source=source.name,
                kind=source.kind,
                **{source.address_field: source.address},
            )
        resolved.append(source)
    check_distinct(resolved)  # a name may resolve to an address another source names
    return resolved


async def _account(session: aioboto3.Session, endpoint_url: str | None, direct: bool) -> str:
    config = call_config(SPARE_CONNECTIONS, CALL_TIMEOUT_MAX_SECONDS)
    config = without_proxy(config) if direct else config
    async with session.client("sts", config=config, endpoint_url=endpoint_url) as sts:
        bound_calls(sts, overall_deadline(CALL_TIMEOUT_MAX_SECONDS, CALL_TIMEOUT_MAX_SECONDS))

        async def ask() -> str:
            identity = await sts.get_caller_identity()
            return str(identity["Account"])

        return await retrying(
            ask, backoff=SEND_BACKOFF, judge=_transient_or_fatal, before_wait=_at_most_attempts
        )


def _transient_or_fatal(exc: BaseException) -> Again:
    if classify(exc) is not ErrorKind.TRANSIENT:
        raise _cannot(exc) from None
    return Again.AFTER_BACKOFF


def _at_most_attempts(exc: BaseException, delay: float, retry: Retry) -> Stop[str] | None:
    if retry.failures + 1 >= ATTEMPTS:
        raise _cannot(exc) from None
    return None


def _cannot(exc: BaseException) -> FatalWorkerError:
    return FatalWorkerError(
        "cannot turn activity names into ARNs: STS GetCallerIdentity failed: "
        f"{describe(exc)} (set SFN_<KEY>_ACTIVITY_ARN to skip it)"
    )
