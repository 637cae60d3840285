"""docs/testing.md shows what ``ApiQuotas`` prints. Its Python blocks run as a team's test
modules in tests/test_docs_examples.py, like every page's."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def test_the_summary_shown_is_what_api_quotas_prints() -> None:
    from sfn_worker.testing import ApiQuotas

    shown = re.search(r"^```\n(API .*?)^```$", PAGE.read_text(), re.MULTILINE | re.DOTALL)
    assert shown is not None
    assert shown.group(1).splitlines()[0] == ApiQuotas().summary().splitlines()[0]
