"""The kinds of task source, one package each: how its tasks arrive (its intake), what it
does around a task (admit, keep, settle), and the SourceWorker that serves it. The rest
of the task path (tasks/) is shared; tasks/kinds.py lists the kinds."""
