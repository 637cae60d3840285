"""A handler module that takes seconds to import (a big framework): signals in that window
must be honoured once the worker's runtime exists."""

from __future__ import annotations

import json
import sys
import time

from sfn_worker.examples import seed_handler

print(json.dumps({"event": "slow import started"}), file=sys.stderr, flush=True)
time.sleep(3)

handler = seed_handler
