"""The AWS client types the worker's parts share (the clients themselves: runtime/client.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient as SQSClient
    from types_aiobotocore_stepfunctions import SFNClient as SFNClient
else:
    SFNClient = SQSClient = object
