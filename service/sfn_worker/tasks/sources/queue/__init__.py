"""Callback queues: SQS messages carry tokens of ``.waitForTaskToken`` states."""
