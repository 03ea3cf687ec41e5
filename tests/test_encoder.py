"""The item encoder of ``@sse.stream``, checked against :class:`Event` itself.

:func:`flask_sse_stream._extension.encoder` frames a one-line ``str`` without
building an ``Event``; whatever it is given, its bytes (or its error) must be
those of ``Event(item).encode()``, or ``Event(dumps(item)).encode()`` for a
``dict`` or ``list``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_sse_stream import Comment, Event, InvalidEventError
from flask_sse_stream._event import JSONDumps
from flask_sse_stream._extension import encoder

PROPERTY = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Outcome = tuple[str, bytes | str]


def outcome(make: Callable[[], bytes]) -> Outcome:
    """The bytes ``make`` returns, or its error's type and message."""
    try:
        return ("bytes", make())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def via_encoder(item: Any, dumps: JSONDumps = json.dumps) -> Outcome:
    encode = encoder(dumps)
    return outcome(lambda: encode(item))


def via_event(data: Any) -> Outcome:
    return outcome(lambda: Event(data).encode())


class Text(str):
    """A str subclass: it takes the general path, with the same result."""


# Characters the fast path must notice or pass through unchanged: the
# stream's three line breaks, NUL, the breaks only str.splitlines() knows,
# lone surrogates (not encodable as UTF-8) and a character outside the BMP.
AWKWARD = ["\r", "\n", "\r\n", "\0", "\x85", "\u2028", "\x0b", "\ud800", "\udfff", "\U0001f600"]

TEXTS = [
    "",
    "x",
    "hello world",
    "é" * 25,
    "a\nb",
    "a\rb",
    "a\r\nb",
    "\n",
    "\r\n",
    "trailing\n",
    "\n\n",
    "nul\0inside",
    "line\u2028separator",
    "next\x85line",
    "lone \ud800 surrogate",
    "\udfff",
    "surrogate\non line two \ud800",
    "emoji \U0001f600",
]


@pytest.mark.parametrize("text", TEXTS)
def test_a_str_is_framed_as_event_frames_it(text: str) -> None:
    assert via_encoder(text) == via_event(text)


@pytest.mark.parametrize("text", ["single", "two\nlines", "bad \ud800"])
def test_a_str_subclass_is_framed_as_event_frames_it(text: str) -> None:
    assert via_encoder(Text(text)) == via_event(Text(text))


def test_the_common_cases_give_the_expected_bytes() -> None:
    encode = encoder(json.dumps)
    assert encode("x" * 50) == b"data: " + b"x" * 50 + b"\n\n"
    assert encode("") == b"data: \n\n"
    assert encode("a\r\nb") == b"data: a\ndata: b\n\n"
    assert encode({"k": 1}) == b'data: {"k": 1}\n\n'


def test_a_lone_surrogate_raises_events_error_naming_its_index() -> None:
    with pytest.raises(InvalidEventError, match="lone surrogate at index 2"):
        encoder(json.dumps)("ab\ud800")


# Arbitrary text, surrogates included, with the awkward pieces often in it.
ANY_TEXT = st.lists(
    st.text(st.characters(exclude_categories=()), max_size=8) | st.sampled_from(AWKWARD),
    max_size=8,
).map("".join)


@PROPERTY
@given(ANY_TEXT)
def test_any_text_is_framed_as_event_frames_it(text: str) -> None:
    assert via_encoder(text) == via_event(text)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@PROPERTY
@given(st.lists(JSON, max_size=3) | st.dictionaries(st.text(max_size=3), JSON, max_size=3))
def test_a_dict_or_list_is_framed_as_an_event_of_its_json(item: Any) -> None:
    dumpers: list[JSONDumps] = [
        json.dumps,
        lambda v: json.dumps(v, ensure_ascii=False),
        lambda v: json.dumps(v, indent=1),
    ]
    for dumps in dumpers:
        assert via_encoder(item, dumps) == via_event(dumps(item))


def test_json_over_several_lines_is_one_data_line_per_line() -> None:
    def dumps(value: Any) -> str:
        return json.dumps(value, indent=2)

    item = {"a": "x", "b": [1]}
    assert via_encoder(item, dumps) == via_event(dumps(item))
    assert encoder(dumps)(item) == (
        b'data: {\ndata:   "a": "x",\ndata:   "b": [\ndata:     1\ndata:   ]\ndata: }\n\n'
    )


@pytest.mark.parametrize(
    "result",
    [b"bytes", None, 5, Text("sub"), Text("two\nlines"), "lone \ud800"],
    ids=["bytes", "None", "int", "str-subclass", "str-subclass-lines", "surrogate"],
)
def test_whatever_a_custom_dumps_returns_it_is_treated_as_event_treats_it(result: Any) -> None:
    def dumps(value: Any) -> Any:
        return result

    assert via_encoder({"k": 1}, dumps) == via_event(result)


@pytest.mark.parametrize(
    "item",
    [Event("a", event="e", id=1), Event({"n": 1}), Comment("note"), Comment("")],
    ids=repr,
)
def test_events_and_comments_give_their_own_bytes(item: Event | Comment) -> None:
    def dumps(value: Any) -> str:
        return json.dumps({"via": value})

    assert encoder(dumps)(item) == item.encode(dumps)


@pytest.mark.parametrize("item", [42, 1.5, b"bytes", None, ("a", "tuple"), {"a", "set"}])
def test_anything_else_is_refused_naming_its_type(item: Any) -> None:
    with pytest.raises(InvalidEventError, match=f"not {type(item).__name__}$"):
        encoder(json.dumps)(item)
