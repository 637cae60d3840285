"""How an AWS error is classified: retry it, the task is gone, stop the worker, or this
request is wrong. Every code the worker's services answer is listed on purpose."""

from __future__ import annotations

import asyncio
from enum import Enum

import aiohttp
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


# Everything a Step Functions call can raise that is about the call, not a bug in the worker.
API_ERRORS: tuple[type[BaseException], ...] = (
    ClientError,
    BotoCoreError,
    aiohttp.ClientError,
    OSError,
    asyncio.TimeoutError,
)
