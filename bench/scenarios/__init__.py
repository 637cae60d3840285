"""One module per scenario, each with ``TITLE`` and ``async def run(options, report)``."""
