#!/usr/bin/env bash
# Run the worker on an EC2 host with Docker; credentials come from the instance profile.
# The stop timeout must exceed SFN_SHUTDOWN_GRACE_SECONDS so `docker stop` never SIGKILLs a drain.
set -euo pipefail
exec docker run --rm --name sfn-worker \
    --env-file "${ENV_FILE:-/etc/sfn-worker/worker.env}" \
    --env SFN_SHUTDOWN_GRACE_SECONDS=110 \
    --stop-timeout 120 \
    --publish 127.0.0.1:8080:8080 \
    sfn-activity-worker:latest
