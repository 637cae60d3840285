"""The CloudWatch embedded metric format, as its specification states it.

Written from the specification (docs.aws.amazon.com, "Specification: Embedded metric
format"): a JSON Schema for the document's structure, and ``check_targets`` for the rules
a schema cannot say (every referenced member exists on the root with the right type).
"""

from __future__ import annotations

from typing import Any

import jsonschema

UNITS = [
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes",
    "Gigabytes", "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits",
    "Percent", "Count", "Bytes/Second", "Kilobytes/Second", "Megabytes/Second",
    "Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second",
    "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
]  # fmt: skip
NAME = {"type": "string", "minLength": 1, "maxLength": 255}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "minimum": 0},
                "CloudWatchMetrics": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["Namespace", "Dimensions", "Metrics"],
                        "properties": {
                            "Namespace": NAME,
                            "Dimensions": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "array", "maxItems": 9, "items": NAME},
                            },
                            "Metrics": {
                                "type": "array",
                                "maxItems": 100,
                                "items": {
                                    "type": "object",
                                    "required": ["Name"],
                                    "properties": {"Name": NAME, "Unit": {"enum": UNITS}},
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def check_targets(document: dict[str, Any]) -> None:
    """Dimension targets are strings; metric targets numbers or up to 100 numbers."""
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:
                assert isinstance(document.get(key), str), f"dimension {key} has no string value"
        for metric in directive["Metrics"]:
            value = document.get(metric["Name"])
            values = value if isinstance(value, list) else [value]
            assert len(values) <= 100, metric["Name"]
            assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in values), (
                f"metric {metric['Name']} has no numeric value"
            )


def validate(document: dict[str, Any]) -> None:
    jsonschema.validate(document, SCHEMA)
    check_targets(document)
