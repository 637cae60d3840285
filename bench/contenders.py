"""What users would otherwise write, run against the same fake endpoint.

  seed      the seed walkthrough's loop: one poll, handle, answer, repeat (sync boto3)
  threaded  N threads each running that loop on one shared boto3 client
  bare      N asyncio coroutines on one aioboto3 client: get -> handle -> answer;
            no queue, heartbeats or logs

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
from botocore.config import Config


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


async def run_bare(arn: str, coroutines: int, sleep: float) -> None:
    session = aioboto3.Session()
    config = Config(read_timeout=70, max_pool_connections=max(10, coroutines))
    async with session.client("stepfunctions", config=config) as client:

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
    args = parser.parse_args()
    if args.kind == "seed":
        run_sync(args.arn, 1, args.sleep)
    elif args.kind == "threaded":
        run_sync(args.arn, args.concurrency, args.sleep)
    else:
        asyncio.run(run_bare(args.arn, args.concurrency, args.sleep))


if __name__ == "__main__":
    main()
