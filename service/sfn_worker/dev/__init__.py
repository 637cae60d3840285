"""``sfn-worker dev``: a local loop for your own handler or app, on LocalStack.

``localstack.py`` installs and runs the emulator; ``discover.py`` asks a fresh process what
a target serves; ``resources.py`` creates the activities, queues and state machines;
``session.py`` is the state file and the export lines; ``supervisor.py`` runs and restarts
the worker; ``start.py`` is ``sfn-worker dev start``; ``command.py`` the command line.
"""
