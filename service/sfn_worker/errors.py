"""Exceptions users raise, Step Functions limits, and how API errors are classified."""

from __future__ import annotations

import asyncio
import errno
import re
import resource
import signal
from collections.abc import Iterator
from enum import Enum

import aiohttp
import structlog
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as SdkConnectionError

log = structlog.get_logger("sfn_worker.errors")

# Step Functions API limits (SendTaskSuccess / SendTaskFailure).
MAX_OUTPUT_BYTES = 262_144
MAX_ERROR_CHARS = 256
MAX_CAUSE_CHARS = 32_768
TRUNCATION_MARK = "…[truncated]"

# Error names the worker itself sends; stable so state machines can Retry/Catch on them.
SHUTDOWN_ERROR = "Worker.Shutdown"
INVALID_INPUT_ERROR = "Worker.InvalidInput"
INVALID_OUTPUT_ERROR = "Worker.InvalidOutput"
OUTPUT_TOO_LARGE_ERROR = "Worker.OutputTooLarge"
PROCESS_DIED_ERROR = "Worker.HandlerProcessDied"


class TaskFailed(Exception):
    """Raise from a handler to fail the task with a chosen error name and cause."""

    def __init__(self, error: str, cause: str = "") -> None:
        super().__init__(error, cause)
        self.error = error
        self.cause = cause

    def __str__(self) -> str:
        return f"{self.error}: {self.cause}" if self.cause else self.error


class HandlerExited(Exception):
    """An async handler raised SystemExit or KeyboardInterrupt: its task fails, not the worker.

    asyncio lets those two escape the event loop and end the process; the handler's call is
    wrapped so they arrive here instead, and the task fails named after the original.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(type(original).__name__)
        self.original = original


class HandlerProcessDied(Exception):
    """The process running a process-mode handler ended before it answered."""

    def __init__(self, pid: int | None, exitcode: int | None, detail: str = "") -> None:
        super().__init__(pid, exitcode, detail)
        self.pid = pid
        self.exitcode = exitcode
        self.detail = detail

    def __str__(self) -> str:
        text = f"the handler process (pid {self.pid}) {describe_exit(self.exitcode)}"
        return f"{text}: {self.detail}" if self.detail else text


def describe_exit(exitcode: int | None) -> str:
    """How a process ended, from ``Process.exitcode`` (negative: killed by that signal)."""
    if exitcode is None:
        return "ended without an exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {name} ({-exitcode})"
    return f"exited with code {exitcode}"


class RemoteHandlerError(Exception):
    """An exception a process-mode handler raised, as it crossed back to the worker.

    Exceptions do not always survive pickling (required constructor arguments, classes
    only the child knows), so the child sends the type's name and message instead.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class FatalWorkerError(Exception):
    """The worker cannot go on (no such activity, access denied, no credentials)."""


class LifespanFailed(Exception):
    """The app's lifespan raised on entry; nothing was polled."""


class WorkerCrashed(Exception):
    """A defect in the worker itself stopped it (after answering what ran)."""


def error_name(exc: BaseException) -> str:
    """The error name a task fails with when its handler raised ``exc``."""
    if isinstance(exc, HandlerExited):
        exc = exc.original
    if isinstance(exc, TaskFailed):
        return str(exc.error)
    if isinstance(exc, HandlerProcessDied):
        return PROCESS_DIED_ERROR
    if isinstance(exc, RemoteHandlerError):
        return exc.type_name
    return type(exc).__name__


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK


class ErrorKind(Enum):
    TRANSIENT = "transient"  # retry with backoff
    TASK_GONE = "task_gone"  # the token is closed: stop working on it, send nothing
    FATAL = "fatal"  # configuration or permission problem: stop the worker
    REJECTED = "rejected"  # this request is wrong; retrying it will not help


# Every error code the services the worker calls can answer has a deliberate class below
# (tests/hostile/test_api_faults.py walks botocore's models of Step Functions and SQS).
# SQS speaks JSON with query-compatible codes: botocore reports the query code (the
# `x-amzn-query-error` header, e.g. "AWS.SimpleQueueService.NonExistentQueue") as the error
# code, so both names are listed. Its throttles are HTTP 403.
SQS_QUERY_CODES = {  # SQS's model name -> the code botocore reports (AWS SDKs' SQS models)
    "BatchEntryIdsNotDistinct": "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    "BatchRequestTooLong": "AWS.SimpleQueueService.BatchRequestTooLong",
    "EmptyBatchRequest": "AWS.SimpleQueueService.EmptyBatchRequest",
    "InvalidBatchEntryId": "AWS.SimpleQueueService.InvalidBatchEntryId",
    "KmsAccessDenied": "KMS.AccessDeniedException",
    "KmsDisabled": "KMS.DisabledException",
    "KmsInvalidKeyUsage": "KMS.InvalidKeyUsageException",
    "KmsInvalidState": "KMS.InvalidStateException",
    "KmsNotFound": "KMS.NotFoundException",
    "KmsOptInRequired": "KMS.OptInRequired",
    "KmsThrottled": "KMS.ThrottlingException",
    "MessageNotInflight": "AWS.SimpleQueueService.MessageNotInflight",
    "PurgeQueueInProgress": "AWS.SimpleQueueService.PurgeQueueInProgress",
    "QueueDeletedRecently": "AWS.SimpleQueueService.QueueDeletedRecently",
    "QueueDoesNotExist": "AWS.SimpleQueueService.NonExistentQueue",
    "QueueNameExists": "QueueAlreadyExists",
    "TooManyEntriesInBatchRequest": "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    "UnsupportedOperation": "AWS.SimpleQueueService.UnsupportedOperation",
}


def _with_query_codes(*codes: str) -> frozenset[str]:
    return frozenset({*codes, *(SQS_QUERY_CODES[c] for c in codes if c in SQS_QUERY_CODES)})


TASK_GONE_CODES = frozenset({"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"})
# KMS refused to encrypt an answer (the activity has a customer-managed key); final.
KMS_REFUSED_CODES = frozenset({"KmsAccessDeniedException", "KmsInvalidStateException"})
# The service's "too many calls": a token bucket (the account's, or SQS's or KMS's behind
# it) is empty. Retried within a second: the bucket refills continuously.
THROTTLING_CODES = _with_query_codes(
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "KmsThrottlingException",  # Step Functions: KMS throttled its encryption of the answer
    "RequestThrottled",  # SQS (HTTP 403)
    "KmsThrottled",  # SQS: KMS throttled the queue's decryption
    "OverLimit",  # SQS: too many messages in flight (HTTP 403); ends as messages are deleted
)
TRANSIENT_CODES = THROTTLING_CODES | frozenset(
    {
        "ActivityWorkerLimitExceeded",  # 1,000 open polls on the ARN: others will return
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "InternalError",
        "AWS.SimpleQueueService.InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "ExpiredToken",
        "ExpiredTokenException",  # credentials refresh on the next attempt
    }
)
FATAL_CODES = _with_query_codes(
    "ActivityDoesNotExist",
    "InvalidArn",
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "MissingAuthenticationToken",
    "KmsAccessDeniedException",
    "KmsInvalidStateException",
    "QueueDoesNotExist",
    "QueueDeletedRecently",
    "InvalidAddress",  # the queue URL's host is not an SQS endpoint
    "InvalidSecurity",  # SQS refuses the request's transport or signature
    "KmsAccessDenied",  # a queue the worker's role cannot decrypt
    "KmsDisabled",
    "KmsInvalidKeyUsage",
    "KmsInvalidState",
    "KmsNotFound",
    "KmsOptInRequired",
)
# An SQS receipt handle that no longer works: the message was deleted, or delivered again
# with a newer handle. Final for that handle.
STALE_RECEIPT_CODES = _with_query_codes(
    "ReceiptHandleIsInvalid",
    "InvalidIdFormat",  # folded into ReceiptHandleIsInvalid, still in the model
    "InvalidParameterValue",  # "Value ... for parameter ReceiptHandle is invalid"
    "MessageNotInflight",
)
# Known, and final for that request: retrying cannot help. The ones the worker's own calls
# can meet (InvalidOutput, stale receipts...) are handled where they are made; the rest
# belong to APIs the worker does not call.
REJECTED_CODES = STALE_RECEIPT_CODES | _with_query_codes(
    # Step Functions
    "InvalidOutput",
    "ValidationException",
    "MissingRequiredParameter",
    "ActivityAlreadyExists",
    "ActivityLimitExceeded",
    "ConflictException",
    "ExecutionAlreadyExists",
    "ExecutionDoesNotExist",
    "ExecutionLimitExceeded",
    "ExecutionNotRedrivable",
    "InvalidDefinition",
    "InvalidEncryptionConfiguration",
    "InvalidExecutionInput",
    "InvalidLoggingConfiguration",
    "InvalidName",
    "InvalidTracingConfiguration",
    "ResourceNotFound",
    "ServiceQuotaExceededException",
    "StateMachineAlreadyExists",
    "StateMachineDeleting",
    "StateMachineDoesNotExist",
    "StateMachineLimitExceeded",
    "StateMachineTypeNotSupported",
    "TooManyTags",
    # SQS
    "BatchEntryIdsNotDistinct",
    "BatchRequestTooLong",
    "EmptyBatchRequest",
    "InvalidAttributeName",
    "InvalidAttributeValue",
    "InvalidBatchEntryId",
    "InvalidMessageContents",
    "PurgeQueueInProgress",
    "QueueNameExists",
    "ResourceNotFoundException",
    "TooManyEntriesInBatchRequest",
    "UnsupportedOperation",
)


def is_throttling(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and error_code(exc) in THROTTLING_CODES


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    return type(exc).__name__


# The path to the service or to the credential provider failed; waiting can heal it.
_NETWORK_ERRORS = (
    HTTPClientError,  # read timeout, connection closed or reset mid-call
    SdkConnectionError,  # could not connect, connect timeout, proxy, TLS handshake
    IncompleteReadError,
    CredentialRetrievalError,  # the ECS/EC2 credential endpoint did not answer
    aiohttp.ClientError,
    OSError,
    asyncio.TimeoutError,
)


def classify(exc: BaseException) -> ErrorKind:
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in TASK_GONE_CODES:
            return ErrorKind.TASK_GONE
        if code in FATAL_CODES:
            return ErrorKind.FATAL
        if code in TRANSIENT_CODES:
            return ErrorKind.TRANSIENT
        # An unknown code: the HTTP status decides.
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code not in REJECTED_CODES and (status >= 500 or status == 429):
            return ErrorKind.TRANSIENT
        return ErrorKind.REJECTED
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ErrorKind.FATAL
    if isinstance(exc, _NETWORK_ERRORS):
        return ErrorKind.TRANSIENT
    return ErrorKind.REJECTED


def may_have_been_recorded(exc: BaseException) -> bool:
    """True when the server may have acted on a request even though we saw an error."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return bool(status >= 500)
    # The request may have reached the server before the connection broke (aiobotocore
    # reports a reset after sending as EndpointConnectionError too).
    return classify(exc) is ErrorKind.TRANSIENT


# Long unbroken runs of token-like characters: a service message may echo a task token.
_SECRET_LIKE = re.compile(r"[A-Za-z0-9+/=_\-]{64,}")
MAX_DESCRIBED_CHARS = 300


def describe(exc: BaseException) -> str:
    """One line for logs: error code and message, never request parameters or tokens."""
    if isinstance(exc, ClientError):
        message = str(exc.response.get("Error", {}).get("Message", ""))
        text = f"{error_code(exc)}: {message}" if message else error_code(exc)
    else:
        detail = str(exc)
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    if out_of_file_descriptors(exc):
        text = f"{text} (too many open files)"
        _say_out_of_file_descriptors()
    return truncate(_SECRET_LIKE.sub("<redacted>", text), MAX_DESCRIBED_CHARS)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: chained exceptions, botocore's ``error``, aiohttp's
    ``os_error`` (botocore reports a socket that could not be opened as "Could not
    connect")."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        kwargs = getattr(current, "kwargs", None)
        wrapped = kwargs.get("error") if isinstance(kwargs, dict) else None
        pending += [current.__cause__, current.__context__, getattr(current, "os_error", None)]
        if isinstance(wrapped, BaseException):
            pending.append(wrapped)


def out_of_file_descriptors(exc: BaseException) -> bool:
    return any(
        isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE) for e in _causes(exc)
    )


_said_out_of_file_descriptors = False


def _say_out_of_file_descriptors() -> None:
    """Once per process: the real cause of connections that cannot open, with the limit."""
    global _said_out_of_file_descriptors
    if _said_out_of_file_descriptors:
        return
    _said_out_of_file_descriptors = True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.error(
        "out of file descriptors: connections cannot be opened",
        open_files_limit=soft,
        hard_limit=hard,
        hint="raise the limit: ECS task definition ulimits nofile (softLimit/hardLimit), "
        "docker run --ulimit nofile=65536:65536, systemd LimitNOFILE; or lower "
        "SFN_CONCURRENCY",
    )


# Everything a Step Functions call can raise that is about the call, not a bug in the worker.
API_ERRORS: tuple[type[BaseException], ...] = (
    ClientError,
    BotoCoreError,
    aiohttp.ClientError,
    OSError,
    asyncio.TimeoutError,
)
