"""What ``sfn-worker --help`` and each command's help say: the variables that matter for
it, an example, and where to read more. Kept apart from cli.py, which does the work."""

from __future__ import annotations

READ = 'docs/cli.md (commands, flags, settings rules); README "Settings" (every variable)'

MAIN = """\
An AWS Step Functions activity worker: polls activities (and SQS callback queues) for
tasks, runs your handler on each, heartbeats them, answers each token once.

Settings come from SFN_* environment variables (and LOG_LEVEL). A flag (--concurrency,
--log-level, --log-format, --handler) wins over its variable. An SFN_* variable that is not
a setting is refused, with the closest name. Exit codes: 0 after a clean shutdown, 1 when the
worker cannot go on, 2 for a configuration error (one line naming the variable or flag)."""

MAIN_EPILOG = f"""\
example:
  export SFN_ACTIVITY_ARN=arn:aws:states:eu-west-1:123456789012:activity:render
  export SFN_HANDLER=my_jobs:render_video      # module:function, importable from here
  sfn-worker settings                          # what it would run with, and why
  sfn-worker check                             # the same, and the activity exists
  sfn-worker run

read: {READ}"""

# What a single source, or an app, needs; shared by run, check and settings.
SOURCES = """\
what to work (one of):
  SFN_ACTIVITY_ARN + SFN_HANDLER    one activity and its handler (module:function)
  SFN_SQS_QUEUE_URL + SFN_HANDLER   a callback queue (with or without the activity)
  app argument, or SFN_APP          module:app of an sfn_worker.App (several activities)
  The current directory is on the import path: run it from the folder holding your code."""

TUNING = """\
variables that matter most:
  SFN_CONCURRENCY (--concurrency)   tasks worked at once (16)
  SFN_POLLERS                       most open long polls, one per free slot (32)
  SFN_HEARTBEAT_SECONDS             heartbeat interval per running task (10, 0 = off)
  SFN_SHUTDOWN_GRACE_SECONDS        drain time after SIGTERM (25)
  SFN_HANDLER_MODE                  sync handlers in a thread, a process, or async
  SFN_HTTP_PORT                     /healthz and /metrics (0 = off; 8080 in the image)
  LOG_LEVEL (--log-level)           DEBUG, INFO, WARNING, ERROR, CRITICAL (any case)
  SFN_LOG_FORMAT (--log-format)     json or console
  AWS_REGION, AWS_ENDPOINT_URL_SFN  read by botocore, as the AWS tools do"""

RUN_SUMMARY = "work tasks until SIGTERM or SIGINT"
RUN = "Work tasks until SIGTERM or SIGINT (a second signal stops at once)."
RUN_EPILOG = f"""\
{SOURCES}

{TUNING}

examples:
  SFN_ACTIVITY_ARN=arn:aws:states:eu-west-1:123456789012:activity:render \\
    SFN_HANDLER=my_jobs:render_video sfn-worker run
  sfn-worker run media.worker:app --concurrency 8 --log-format console

exit codes: 0 clean shutdown, 1 cannot go on (no activity, access denied, no
credentials, the lifespan failed), 2 configuration error (before any poll).
read: {READ}; README "Writing a handler", "Shutdown\""""

CHECK_SUMMARY = "check settings, credentials and that each activity exists (calls AWS)"
CHECK = (
    "Check the configuration and credentials: DescribeActivity for each activity, "
    "GetQueueAttributes for each callback queue; print each one's settings and where "
    "each came from."
)
CHECK_EPILOG = f"""\
{SOURCES}
  It calls AWS: it needs AWS_REGION and credentials (the standard chain), and
  sts:GetCallerIdentity for activities given by name.

example:
  sfn-worker check media.worker:app

exit codes: 0 every source exists, 1 one does not (or access denied, no credentials),
2 configuration error.
read: {READ}"""

SETTINGS_SUMMARY = "print every setting, its value and its source (no AWS call)"
SETTINGS = (
    "Print every effective setting, its value and its source (flag, environment "
    "variable, app code, default), then each activity's and queue's. Calls no AWS API."
)
SETTINGS_EPILOG = f"""\
{SOURCES}
  Activities given by name show 'resolved from the name at start' (run and check
  resolve them). Only SFN_* settings are printed: no AWS credentials, nothing else.

examples:
  sfn-worker settings
  SFN_CONCURRENCY=8 sfn-worker settings media.worker:app --log-level debug

exit codes: 0, or 2 for a configuration error (the same line run would print).
read: {READ}"""

HEALTHCHECK_SUMMARY = "probe a running worker's /healthz (exit 0 when healthy)"
HEALTHCHECK = "Probe a running worker's health endpoint (the image's HEALTHCHECK)."
HEALTHCHECK_EPILOG = f"""\
what it reads:
  SFN_HTTP_PORT   the worker's HTTP port (8080 in the image); unset or 0: exit 1
  SFN_HTTP_HOST   the address it binds: 0.0.0.0 (default) is probed on 127.0.0.1,
                  :: on ::1, any other address as it is
  It asks http://127.0.0.1:$SFN_HTTP_PORT/healthz, never through HTTP_PROXY, and
  prints the JSON answer.

exit codes: 0 when /healthz answers 200 (polling, every poller alive, the loop
responsive); 1 otherwise: 503 (the reasons printed), unreachable, or no answer
within --timeout.

example (ECS healthCheck): ["CMD", "sfn-worker", "healthcheck"]
read: {READ}; README "Operations\""""
