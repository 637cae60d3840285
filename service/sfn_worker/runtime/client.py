"""The Step Functions clients the worker shares: one for long polls, one for quick calls.

A long poll holds its request open for up to 60 s, so its read timeout must outlast that.
Every other call (heartbeats, answers, DescribeActivity) is answered at once; with the long
poll's timeout, one request sent into a dead connection would wait 70 s before its retry.
So the two kinds of call get two clients from one session, each with its own pool:

- polls: read timeout 70 s; a dead connection under an open poll is noticed by TCP
  keepalive (below) within ``DEAD_CONNECTION_SECONDS`` instead;
- calls: read and connect timeout ``call_timeout_seconds`` (2-5 s: half the shortest
  heartbeat interval, within those bounds); a call that times out fails on that connection,
  which aiohttp closes, and the caller's retry opens a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import socket
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import aioboto3
import botocore
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from botocore import handlers as botocore_handlers
from botocore.exceptions import NoRegionError, ProfileNotFound

from ..aws import SFNClient, SQSClient
from ..config import SourceConfig
from ..settings import SettingsError
from ..tasks.answering import MAX_ANSWERING
from ..tasks.heartbeat import MAX_SENDING
from ..tasks.sources.queue.worker import MAX_PROBING
from .credentials import wait_for_credentials

log = structlog.get_logger("sfn_worker.client")


def _package_version() -> str:
    try:
        return version("sfn-activity-worker")
    except PackageNotFoundError:
        return "0"


# GetActivityTask holds the request open for up to 60 s: the read timeout must outlast it,
# or the SDK gives up on a poll the service may already have handed a task to.
LONG_POLL_READ_TIMEOUT_SECONDS = 70.0
# SQS ReceiveMessage waits up to 20 s.
RECEIVE_READ_TIMEOUT_SECONDS = 30.0
POLL_CONNECT_TIMEOUT_SECONDS = 10.0
# Quick calls: long enough for a 256 KB answer on a slow path, short next to a heartbeat.
CALL_TIMEOUT_MIN_SECONDS = 2.0
CALL_TIMEOUT_MAX_SECONDS = 5.0

# TCP keepalive on every connection: an idle connection (a long poll waiting for its answer)
# is probed after KEEPALIVE_IDLE s, every KEEPALIVE_INTERVAL s; KEEPALIVE_COUNT unanswered
# probes, or data unacknowledged for as long, close it with ETIMEDOUT.
KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_COUNT = 3
DEAD_CONNECTION_SECONDS = KEEPALIVE_IDLE_SECONDS + KEEPALIVE_INTERVAL_SECONDS * KEEPALIVE_COUNT

USER_AGENT = (
    f"sfn-activity-worker/{_package_version()} Botocore/{botocore.__version__} "
    f"Python/{platform.python_version()} {platform.system()}/{platform.release()}"
)
NO_REGION = "no AWS region configured: set AWS_REGION (or AWS_DEFAULT_REGION)"
CREDENTIALS_WAIT_SECONDS = 60.0  # the default of SFN_CREDENTIALS_WAIT_SECONDS


# botocore's built-in handlers that do nothing for the calls this worker makes, run on every
# request all the same (about a tenth of a poll-and-answer cycle's CPU with the retry
# handler below). Removed from each client through its public events API.
UNUSED_HANDLERS = (
    # Fills idempotency-token members: none of these operations has one.
    ("before-parameter-build", botocore_handlers.generate_idempotent_uuid),
    # Forwards Lambda's trace header; the worker never runs inside Lambda.
    ("before-call", botocore_handlers.add_recursion_detection_header),
    # Only for endpoint-discovery operations.
    ("before-call", botocore_handlers.inject_api_version_header_if_needed),
    # SDK retry telemetry headers: botocore does not retry for this worker (it retries
    # itself, see _config), so they would only ever say "attempt=1".
    ("request-created", botocore_handlers.add_retry_headers),
)


def unregister_unused_handlers(client: Any) -> None:
    """Drop UNUSED_HANDLERS and botocore's retry handler from ``client``. With one attempt
    allowed (_config) the retry handler only decides, on every response, not to retry.
    Errors still raise as they would: retries=0 and a response the worker classifies."""
    events = client.meta.events
    for event, handler in UNUSED_HANDLERS:
        events.unregister(event, handler)
    service = client.meta.service_model.service_id.hyphenize()
    events.unregister(f"needs-retry.{service}", unique_id=f"retry-config-{service}")


def call_timeout_seconds(shortest_heartbeat_seconds: float) -> float:
    """Read (and connect) timeout of quick calls: half the heartbeat interval, 2-5 s."""
    if not shortest_heartbeat_seconds:
        return CALL_TIMEOUT_MAX_SECONDS
    return min(
        CALL_TIMEOUT_MAX_SECONDS, max(CALL_TIMEOUT_MIN_SECONDS, shortest_heartbeat_seconds / 2)
    )


def keepalive_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """aiohttp ``socket_factory``: a TCP socket that notices a dead path on its own."""
    family, type_, proto, *_ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # Linux names; other platforms keep the OS defaults (a long poll then ends by its
    # read timeout).
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", DEAD_CONNECTION_SECONDS * 1000),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    return sock


class KeepaliveHTTPSession(AIOHTTPSession):
    """aiobotocore's HTTP session, its aiohttp connector given ``keepalive_socket``.

    aiobotocore 2.25 (the version aioboto3 15.5 pins) ignores botocore's socket options and
    refuses ``socket_factory`` in ``AioConfig.connector_args``; its session constructor
    hands ``connector_args`` to ``aiohttp.TCPConnector`` unchanged, and ``socket_factory``
    is aiohttp's supported way to configure the sockets. ``http_session_cls`` is the
    AioConfig option for choosing the session class.
    """

    def __init__(self, **kwargs: Any) -> None:
        connector_args = kwargs.pop("connector_args", None) or {}
        super().__init__(
            connector_args={**connector_args, "socket_factory": keepalive_socket}, **kwargs
        )


def _config(*, read_timeout: float, connect_timeout: float, pool: int) -> AioConfig:
    return AioConfig(
        read_timeout=read_timeout,
        connect_timeout=connect_timeout,
        max_pool_connections=pool,
        http_session_cls=KeepaliveHTTPSession,
        # The worker retries itself: it must know whether an earlier attempt of a terminal
        # call may have been recorded, and a poll must never be retried behind its back.
        # Legacy mode: with one attempt the modes behave alike, and standard mode adds a
        # retry-quota handler after every call that cannot be unregistered.
        retries={"total_max_attempts": 1, "mode": "legacy"},
        # Requests are built by this package and validated by the service.
        parameter_validation=False,
        # A fixed User-Agent: botocore otherwise rebuilds it twice per request, which
        # costs about a quarter of the CPU of a poll-and-answer cycle.
        user_agent=USER_AGENT,
    )


def poll_config(pollers: int, read_timeout: float = LONG_POLL_READ_TIMEOUT_SECONDS) -> AioConfig:
    # One connection per poller: an open poll holds its connection for its whole wait.
    return _config(
        read_timeout=read_timeout, connect_timeout=POLL_CONNECT_TIMEOUT_SECONDS, pool=pollers
    )


def call_config(pool: int, timeout: float) -> AioConfig:
    return _config(read_timeout=timeout, connect_timeout=timeout, pool=pool)


# Beside the capped calls: DescribeActivity and the like.
SPARE_CONNECTIONS = 2


def calls_pool_connections(sources: Sequence[SourceConfig]) -> int:
    """Connections of the Step Functions quick-calls pool: every request the caps let on
    the wire at once, so none waits for a connection. Answers have one cap for the process
    (tasks/answering.py), each source's heartbeats their own (tasks/heartbeat.py), each
    callback queue's redelivery checks theirs; none needs more than its source's slots.
    Sized from the concurrency instead, 10,000 slots meant 10,000 connections opened at
    once when their answers fell due together at shutdown."""
    answers = min(MAX_ANSWERING, sum(s.concurrency for s in sources))
    heartbeats = sum(min(MAX_SENDING, s.concurrency) for s in sources if s.heartbeat_seconds)
    probes = sum(min(MAX_PROBING, s.concurrency) for s in sources if s.uses_sqs)
    return answers + heartbeats + probes + SPARE_CONNECTIONS


# Files the process opens beside its pools: the HTTP server's connections, pipes to
# handler processes, log and metrics streams, the libraries' own.
FILES_BESIDE_POOLS = 256


def fit_open_files(connections: int) -> None:
    """Raise the soft open-files limit, up to the hard one, to what the pools may open
    (as Go's runtime does at start). 1,000 open polls under a soft limit of 1,024 (Docker's
    default on many hosts) left no file for answers and heartbeats. Short of it even at
    the hard limit, the worker says so once and still runs: a connection that cannot open
    says why (redact.py)."""
    wanted = connections + FILES_BESIDE_POOLS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if raised > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        except (OSError, ValueError):  # a sandbox that refuses it: run with what there is
            raised = soft
        else:
            log.info("open files limit raised for the connection pools", open_files_limit=raised)
    if raised < wanted:
        log.warning(
            "open files limit below what the connection pools may open",
            open_files_limit=raised,
            wanted=wanted,
            hint="raise the hard limit: ECS task definition ulimits nofile (softLimit/"
            "hardLimit), docker run --ulimit nofile=65536:65536, systemd LimitNOFILE; or "
            "lower SFN_POLLERS and SFN_CONCURRENCY: open polls hold files answers then lack",
        )


@dataclass(frozen=True)
class SfnClients:
    """``polls`` for GetActivityTask only; ``calls`` for everything answered at once; the
    same two for SQS when there are callback queues; all from ``session``, which the STS
    client comes from too."""

    polls: SFNClient
    calls: SFNClient
    session: aioboto3.Session
    endpoint_url: str | None = None  # given explicitly (tests): other clients use it too
    sqs_polls: SQSClient | None = None
    sqs: SQSClient | None = None
    credentials: Any = None  # the session's, resolved before the clients (credentials.py)
    direct: bool = False  # no proxy from the environment (a local fake): STS's too


def aws_session() -> aioboto3.Session:
    # botocore reads AWS_DEFAULT_REGION; ECS, Lambda and the other SDKs set AWS_REGION.
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    try:
        session = aioboto3.Session(region_name=region)
        # Reads the profile's section: a profile that is not there fails here, not later.
        session._session.get_scoped_config()
    except ProfileNotFound as exc:
        raise SettingsError(no_such_profile(exc.kwargs.get("profile"))) from None
    if not session.region_name:
        raise SettingsError(NO_REGION)
    return session


def no_such_profile(profile: object) -> str:
    variable = "AWS_PROFILE" if "AWS_PROFILE" in os.environ else "AWS_DEFAULT_PROFILE"
    return (
        f"{variable}={profile!r} names no profile in the AWS config files: "
        "name one that is there, or unset it to use the rest of the credential chain"
    )


@contextlib.asynccontextmanager
async def open_clients(
    sources: Sequence[SourceConfig],
    *,
    session: aioboto3.Session | None = None,
    endpoint_url: str | None = None,
    credentials_wait_seconds: float = CREDENTIALS_WAIT_SECONDS,
    direct: bool = False,
) -> AsyncIterator[SfnClients]:
    """One pool for every activity's polls, one for every source's other calls (and the same
    for SQS). Region, credentials and endpoints (AWS_ENDPOINT_URL_SFN, AWS_ENDPOINT_URL_SQS)
    come from the AWS chain unless given; credentials are waited for first (credentials.py).
    Every call of these clients has an overall deadline (``bound_calls``). ``direct``: no
    proxy from HTTP(S)_PROXY (a local fake's endpoint)."""
    session = session or aws_session()
    try:
        credentials = await wait_for_credentials(session, credentials_wait_seconds)
    except NoRegionError:
        raise SettingsError(NO_REGION) from None
    heartbeats = [a.heartbeat_seconds for a in sources if a.heartbeat_seconds]
    timeout = call_timeout_seconds(min(heartbeats, default=0.0))
    queues = [s for s in sources if s.uses_sqs]
    pollers = sum(s.pollers for s in sources if s not in queues) or 1
    calls_pool = calls_pool_connections(sources)
    receivers = sum(q.pollers for q in queues)
    sqs_calls = sum(q.concurrency for q in queues) + SPARE_CONNECTIONS if queues else 0
    fit_open_files(pollers + calls_pool + receivers + sqs_calls)
    async with contextlib.AsyncExitStack() as stack:
        try:
            polls = await _client(
                stack, session, "stepfunctions", poll_config(pollers), endpoint_url, direct
            )
            calls = await _client(
                stack,
                session,
                "stepfunctions",
                call_config(calls_pool, timeout),
                endpoint_url,
                direct,
            )
            sqs_polls = sqs = None
            if queues:
                receive = poll_config(receivers, RECEIVE_READ_TIMEOUT_SECONDS)
                sqs_polls = await _client(stack, session, "sqs", receive, endpoint_url, direct)
                # Visibility changes, deletes and releases: one per running task at most.
                quick = call_config(sqs_calls, timeout)
                sqs = await _client(stack, session, "sqs", quick, endpoint_url, direct)
        except NoRegionError:
            raise SettingsError(NO_REGION) from None
        for client in (polls, calls, sqs_polls, sqs):
            if client is not None:
                unregister_unused_handlers(client)
        bound_calls(
            polls, overall_deadline(LONG_POLL_READ_TIMEOUT_SECONDS, POLL_CONNECT_TIMEOUT_SECONDS)
        )
        bound_calls(calls, overall_deadline(timeout, timeout))
        if sqs_polls is not None and sqs is not None:
            receive_deadline = overall_deadline(
                RECEIVE_READ_TIMEOUT_SECONDS, POLL_CONNECT_TIMEOUT_SECONDS
            )
            bound_calls(sqs_polls, receive_deadline)
            bound_calls(sqs, overall_deadline(timeout, timeout))
        yield SfnClients(polls, calls, session, endpoint_url, sqs_polls, sqs, credentials, direct)


def without_proxy(config: AioConfig) -> AioConfig:
    # An empty mapping, not None: botocore then reads no proxy from the environment.
    return config.merge(AioConfig(proxies={}))


# botocore's service-specific endpoint variables; AWS_ENDPOINT_URL serves every service.
ENDPOINT_VARIABLES = {"stepfunctions": "AWS_ENDPOINT_URL_SFN", "sqs": "AWS_ENDPOINT_URL_SQS"}


async def _client(
    stack: contextlib.AsyncExitStack,
    session: aioboto3.Session,
    service: str,
    config: AioConfig,
    endpoint_url: str | None,
    direct: bool = False,
) -> Any:
    """A client of ``service``; an endpoint URL it cannot use is a configuration error at
    start, naming where it came from (botocore refuses some only at the first call: a port
    with a comment after it, as ``docker run --env-file`` keeps it)."""
    config = without_proxy(config) if direct else config
    try:
        client = await stack.enter_async_context(
            session.client(service, config=config, endpoint_url=endpoint_url)
        )
        urllib.parse.urlsplit(client.meta.endpoint_url).port  # noqa: B018 - raises if invalid
    except ValueError as exc:
        raise SettingsError(
            f"{_endpoint_origin(service, endpoint_url)} is invalid: {exc}"
        ) from None
    return client


def _endpoint_origin(service: str, given: str | None) -> str:
    if given is not None:
        return f"endpoint_url={given!r}"
    for name in (ENDPOINT_VARIABLES[service], "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return f"{name}={os.environ[name]!r}"
    return f"the {service} endpoint_url of the AWS configuration file"


def overall_deadline(read_timeout: float, connect_timeout: float) -> float:
    """A whole call, from the credentials it signs with to the last byte of its answer:
    a connection, a read, and as long again for waiting on credentials or a connection."""
    return connect_timeout + 2 * read_timeout


def bound_calls(client: Any, seconds: float) -> None:
    """Give every call of ``client`` an overall deadline. botocore bounds each connect and
    each read, but not a call as a whole: waiting for credentials (a refresh inside the
    call), for a free connection, or a trickle of bytes each within the read timeout. The
    deadline wraps the client's one entry point for every operation (its generated methods
    all call ``_make_api_call``); it ends the call with TimeoutError, which the callers
    retry as a network error that may have reached the service."""
    make_api_call = client._make_api_call

    async def within_deadline(operation_name: str, api_params: dict[str, Any]) -> Any:
        async with asyncio.timeout(seconds):
            return await make_api_call(operation_name, api_params)

    client._make_api_call = within_deadline
