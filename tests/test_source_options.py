"""A source kind's settings are declared once (source_options.py): what is written
elsewhere by hand (the keywords' types, the docs table) is held to the models here."""

from __future__ import annotations

import types
import typing
from pathlib import Path

import pytest

from sfn_worker import App
from sfn_worker.config import ACTIVITY_SUFFIXES, QUEUE_SUFFIXES, source_keys
from sfn_worker.settings import Settings, env_name
from sfn_worker.source_options import (
    KEYWORDS,
    KINDS,
    ActivityOptions,
    Option,
    QueueOptions,
    SourceOptions,
    options,
    suffixes,
)

from . import apps

TABLE = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
SECTION = "## Per-source settings"


@pytest.mark.parametrize("model", [ActivityOptions, QueueOptions])
def test_every_setting_has_a_process_wide_default_with_the_same_bounds(
    model: type[SourceOptions],
) -> None:
    for name, option in options(model):
        assert option.setting in Settings.model_fields, f"{name}: no setting {option.setting}"
        assert option.description, f"{name}: no description"
        mine, theirs = model.model_fields[name], Settings.model_fields[option.setting]
        assert mine.annotation == theirs.annotation, name
        bounds = [mark for mark in mine.metadata if not isinstance(mark, Option)]
        assert bounds == theirs.metadata, name


@pytest.mark.parametrize("model", [ActivityOptions, QueueOptions])
def test_the_keywords_in_code_are_the_models_settings(model: type[SourceOptions]) -> None:
    """App.activity / App.callback_queue take exactly the kind's settings, typed as the
    model validates them (choices also as str, None: not given)."""
    hints = typing.get_type_hints(KEYWORDS[model])
    assert list(hints) == [name for name, _ in options(model)]
    for name, hint in hints.items():
        accepted = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        assert model.model_fields[name].annotation in accepted, name
        assert type(None) in accepted, f"{name}: None (not given) must be accepted"


def test_the_environment_suffixes_are_the_models_settings_and_address() -> None:
    activity = frozenset(name.upper() for name, _ in options(ActivityOptions))
    queue = frozenset(name.upper() for name, _ in options(QueueOptions))
    assert (
        activity | {"ACTIVITY_ARN"},
        queue | {"QUEUE_URL"},
    ) == (ACTIVITY_SUFFIXES, QUEUE_SUFFIXES)
    ((_, (_, known)),) = source_keys([], ["https://sqs.us-east-1.amazonaws.com/1/q"]).items()
    assert known == suffixes(QueueOptions)


@pytest.mark.parametrize(
    ("register", "word"),
    [
        (lambda app: app.activity("render", concurency=2), "concurency"),
        (lambda app: app.activity("render", visibility_seconds=30), "visibility_seconds"),
        (
            lambda app: app.callback_queue("https://sqs.x/123456789012/q", tokenfield="T"),
            "tokenfield",
        ),
    ],
)
def test_an_unknown_keyword_is_refused_at_registration_naming_it(
    register: typing.Callable[[App], object], word: str
) -> None:
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{word}'"):
        register(App())


def test_a_keyword_given_as_none_is_not_given() -> None:
    app = App()
    app.callback_queue("https://sqs.us-east-1.amazonaws.com/123456789012/q", concurrency=None)(
        apps.quick
    )
    assert app.queues[0].options == {}


def expected_table() -> list[str]:
    """The docs table as the models describe it: one row per SFN_<KEY>_<SETTING>."""
    rows: dict[str, tuple[list[str], str, str]] = {}
    for kind, model in KINDS.items():
        described = [
            (name.upper(), f"`{env_name(option.setting)}`", option.description)
            for name, option in options(model)
        ]
        described.append((model.address_suffix, "-", model.address_description))
        for suffix, default, description in described:
            rows.setdefault(suffix, ([], default, description))[0].append(kind)
    return [
        f"| `SFN_<KEY>_{suffix}` | {', '.join(kinds)} | {default} | {description} |"
        for suffix, (kinds, default, description) in rows.items()
    ]


def test_the_docs_table_of_per_source_settings_is_the_models() -> None:
    """The table is written in the page (the site is plain Markdown) and held here to the
    models: adding a setting fails this test until its row, printed below, is pasted in."""
    text = TABLE.read_text()
    assert SECTION in text, f"{TABLE} has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `SFN_<KEY>_")]
    expected = expected_table()
    assert rows == expected, "docs/settings.md's table should read:\n" + "\n".join(expected)
