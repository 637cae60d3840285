"""What users would otherwise write, run against the same fake endpoint.

  seed      the seed walkthrough's loop: one poll, handle, answer, repeat (sync boto3)
  threaded  N threads each running that loop on one shared boto3 client
  bare      N asyncio coroutines on one aioboto3 client: get -> handle -> answer;
            no queue, heartbeats or logs

The bare loop can take, one by one, the client settings the worker uses (--with), so each
saving is measured on its own: uvloop, the pinned User-Agent, no client-side parameter
validation, botocore's unused handlers unregistered (with legacy retry mode).

Each handles {"in": "SUCCESS"} like the seed handler, after sleeping --sleep seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from typing import Any

import aioboto3
import boto3
import uvloop
from botocore.config import Config

from sfn_worker.runtime.client import USER_AGENT, unregister_unused_handlers


def seed(task_input: Any) -> tuple[bool, str]:
    if task_input.get("in") == "SUCCESS":
        return True, json.dumps({"result": task_input})
    return False, ""


def sync_loop(client: Any, arn: str, sleep: float, stop: threading.Event) -> None:
    while not stop.is_set():
        task = client.get_activity_task(activityArn=arn, workerName="bench")
        token = task.get("taskToken")
        if not token:
            continue
        if sleep:
            time.sleep(sleep)
        ok, output = seed(json.loads(task["input"]))
        if ok:
            client.send_task_success(taskToken=token, output=output)
        else:
            client.send_task_failure(taskToken=token, error="NO_SUCCESS_INPUT", cause="no")


def run_sync(arn: str, threads: int, sleep: float) -> None:
    config = Config(read_timeout=70, max_pool_connections=max(10, threads))
    client = boto3.client("stepfunctions", config=config)
    stop = threading.Event()
    workers = [
        threading.Thread(target=sync_loop, args=(client, arn, sleep, stop), daemon=True)
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


SAVINGS = ("uvloop", "user-agent", "no-validation", "lean-handlers")


async def run_bare(arn: str, coroutines: int, sleep: float, savings: set[str]) -> None:
    session = aioboto3.Session()
    options: dict[str, Any] = {"read_timeout": 70, "max_pool_connections": max(10, coroutines)}
    if "user-agent" in savings:
        options["user_agent"] = USER_AGENT
    if "no-validation" in savings:
        options["parameter_validation"] = False
    if "lean-handlers" in savings:
        options["retries"] = {"total_max_attempts": 1, "mode": "legacy"}
    async with session.client("stepfunctions", config=Config(**options)) as client:
        if "lean-handlers" in savings:
            unregister_unused_handlers(client)

        async def loop() -> None:
            while True:
                task = await client.get_activity_task(activityArn=arn, workerName="bench")
                token = task.get("taskToken")
                if not token:
                    continue
                if sleep:
                    await asyncio.sleep(sleep)
                ok, output = seed(json.loads(task["input"]))
                if ok:
                    await client.send_task_success(taskToken=token, output=output)
                else:
                    await client.send_task_failure(
                        taskToken=token, error="NO_SUCCESS_INPUT", cause="no"
                    )

        async with asyncio.TaskGroup() as group:
            for _ in range(coroutines):
                group.create_task(loop())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["seed", "threaded", "bare"])
    parser.add_argument("--arn", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--with", dest="savings", action="append", default=[], choices=SAVINGS)
    args = parser.parse_args()
    if args.kind == "seed":
        run_sync(args.arn, 1, args.sleep)
    elif args.kind == "threaded":
        run_sync(args.arn, args.concurrency, args.sleep)
    else:
        savings = set(args.savings)
        loop_factory = uvloop.new_event_loop if "uvloop" in savings else None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run_bare(args.arn, args.concurrency, args.sleep, savings))


if __name__ == "__main__":
    main()
