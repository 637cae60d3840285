"""The process's exit codes, for every command."""

EXIT_OK = 0
EXIT_FAILURE = 1  # the worker stopped on an error, or a check failed
EXIT_CONFIG = 2  # misconfiguration: one line names the variable, before any poll
