"""The wire format: Event, Comment and encode, checked byte for byte.

Every encoding is also read back by two independent readers: the
spec-literal one in ``spec_parser`` and the public ``flask_sse_stream.testing``
parser, so a table row proves both what we write and what a browser sees.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_parser import SpecEvent, read_stream

from flask_sse_stream import Comment, Event, InvalidEventError
from flask_sse_stream._event import encode
from flask_sse_stream.testing import EventStreamParser, ServerSentEvent, parse

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_both(wire: bytes) -> list[ServerSentEvent]:
    """Parse with both readers, check they agree, return the events."""
    fast = parse(wire)
    spec = read_stream(wire).events
    assert [SpecEvent(e.event, e.data, e.id, e.retry) for e in fast] == spec
    return fast


def feed_bytewise(wire: bytes) -> list[ServerSentEvent]:
    parser = EventStreamParser()
    events: list[ServerSentEvent] = []
    for i in range(len(wire)):
        events += parser.feed(wire[i : i + 1])
    parser.close()
    return events


def normalise(text: str) -> str:
    """What a receiver rebuilds from data: every line break becomes LF."""
    return re.sub(r"\r\n|\r", "\n", text)


class Priority(enum.IntEnum):
    HIGH = 2


# (the item, its exact bytes)
ENCODINGS: list[tuple[Event | Comment, bytes]] = [
    (Event("hello"), b"data: hello\n\n"),
    (Event(""), b"data: \n\n"),
    (Event("a\nb"), b"data: a\ndata: b\n\n"),
    (Event("a\r\nb"), b"data: a\ndata: b\n\n"),
    (Event("a\rb"), b"data: a\ndata: b\n\n"),
    (Event("\r"), b"data: \ndata: \n\n"),
    (Event("\n"), b"data: \ndata: \n\n"),
    (Event("\r\n"), b"data: \ndata: \n\n"),
    (Event("\n\r"), b"data: \ndata: \ndata: \n\n"),
    (Event("a\n\nb"), b"data: a\ndata: \ndata: b\n\n"),
    (Event("a\r\r\nb"), b"data: a\ndata: \ndata: b\n\n"),
    (Event("end\n"), b"data: end\ndata: \n\n"),
    (Event("  two spaces"), b"data:   two spaces\n\n"),
    (Event(" "), b"data:  \n\n"),
    (Event("a\n  b"), b"data: a\ndata:   b\n\n"),
    (Event(":not a comment"), b"data: :not a comment\n\n"),
    (Event("data: x"), b"data: data: x\n\n"),
    (Event("k: v"), b"data: k: v\n\n"),
    (Event("nul\0inside"), b"data: nul\0inside\n\n"),
    (Event("\u00e9\u20ac\U0001f600"), "data: \u00e9\u20ac\U0001f600\n\n".encode()),
    (Event("\ufeffbom"), b"data: \xef\xbb\xbfbom\n\n"),
    # Line breaks to str.splitlines() but not to an event stream.
    (Event("a\u2028b"), "data: a\u2028b\n\n".encode()),
    (Event("a\u2029b"), "data: a\u2029b\n\n".encode()),
    (Event("a\x85b"), "data: a\x85b\n\n".encode()),
    (Event("a\x0bb\x0cc"), b"data: a\x0bb\x0cc\n\n"),
    (Event("a\x1cb\x1dc\x1ed"), b"data: a\x1cb\x1dc\x1ed\n\n"),
    (Event("x", event="tick"), b"event: tick\ndata: x\n\n"),
    (Event("x", event=" padded"), b"event:  padded\ndata: x\n\n"),
    (Event("x", event=""), b"event: \ndata: x\n\n"),
    (Event("x", event="\u2028"), "event: \u2028\ndata: x\n\n".encode()),
    (Event("x", id="7"), b"id: 7\ndata: x\n\n"),
    (Event("x", id=7), b"id: 7\ndata: x\n\n"),
    (Event("x", id=0), b"id: 0\ndata: x\n\n"),
    (Event("x", id=Priority.HIGH), b"id: 2\ndata: x\n\n"),
    (Event("x", retry=Priority.HIGH), b"retry: 2\ndata: x\n\n"),
    (Event("x", id=-3), b"id: -3\ndata: x\n\n"),
    (Event("x", id=""), b"id: \ndata: x\n\n"),
    (Event("x", id="a b:c"), b"id: a b:c\ndata: x\n\n"),
    (Event("x", retry=0), b"retry: 0\ndata: x\n\n"),
    (Event("x", retry=2000), b"retry: 2000\ndata: x\n\n"),
    (Event("x", retry=10**20), b"retry: 100000000000000000000\ndata: x\n\n"),
    (
        Event("a\nb", event="e", id="1", retry=5),
        b"id: 1\nevent: e\nretry: 5\ndata: a\ndata: b\n\n",
    ),
    (Event(None, retry=3000), b"retry: 3000\n\n"),
    (Event(None, id="5"), b"id: 5\n\n"),
    (Event(None, event="ignored"), b"event: ignored\n\n"),
    (Event(None), b"\n"),
    (Event({"a": 1}), b'data: {"a": 1}\n\n'),
    (Event([1, "two", None]), b'data: [1, "two", null]\n\n'),
    (Event(1), b"data: 1\n\n"),
    (Event(True), b"data: true\n\n"),
    (Event({"s": "line\nbreak"}), b'data: {"s": "line\\nbreak"}\n\n'),
    (Event({"k": "\u20ac"}, event="j", id=2), b'id: 2\nevent: j\ndata: {"k": "\\u20ac"}\n\n'),
    (Comment(), b":\n"),
    (Comment(""), b":\n"),
    (Comment("hi"), b": hi\n"),
    (Comment(" x"), b":  x\n"),
    (Comment("a\nb"), b": a\n: b\n"),
    (Comment("a\r\nb\rc"), b": a\n: b\n: c\n"),
    (Comment("\n"), b": \n: \n"),
    (Comment("a\u2028b"), ": a\u2028b\n".encode()),
]


@pytest.mark.parametrize(("item", "wire"), ENCODINGS, ids=repr)
def test_encodes_to_exact_bytes(item: Event | Comment, wire: bytes) -> None:
    assert item.encode() == wire
    assert encode(item) == wire
    assert not wire.startswith(b"\xef\xbb\xbf")


EVENTS = [(item, wire) for item, wire in ENCODINGS if isinstance(item, Event)]


@pytest.mark.parametrize(("item", "wire"), EVENTS, ids=repr)
def test_each_event_is_read_back_as_it_was_written(item: Event, wire: bytes) -> None:
    events = read_both(wire)
    if item.data is None:
        assert events == []
        return
    assert len(events) == 1
    (received,) = events
    text = item.data if isinstance(item.data, str) else json.dumps(item.data)
    assert received.data == normalise(text)
    assert received.event == (item.event or "message")
    assert received.id == (item.id or "")
    assert received.retry == item.retry
    assert feed_bytewise(wire) == events


@pytest.mark.parametrize(
    ("item", "wire"), [(i, w) for i, w in ENCODINGS if isinstance(i, Comment)], ids=repr
)
def test_each_comment_is_read_back_as_comment_lines(item: Comment, wire: bytes) -> None:
    parser = EventStreamParser()
    assert parser.feed(wire) == []
    assert parser.comments == re.split(r"\r\n|\r|\n", item.text)
    assert read_stream(wire).comments == parser.comments


def test_int_id_is_kept_as_its_decimal_text() -> None:
    assert Event("x", id=42).id == "42"


def test_data_none_sets_id_and_retry_but_dispatches_nothing() -> None:
    wire = Event(None, id="9", retry=50).encode() + Event("after").encode()
    parser = EventStreamParser()
    events = parser.feed(wire)
    assert events == [ServerSentEvent("message", "after", "9", None)]
    assert parser.retry == 50
    assert read_stream(wire).reconnection_time == 50


def test_empty_id_resets_the_last_event_id() -> None:
    wire = Event("a", id="1").encode() + Event("b").encode() + Event("c", id="").encode()
    assert [e.id for e in read_both(wire)] == ["1", "1", ""]


def test_json_goes_through_the_given_dumps_once_and_the_bytes_are_kept() -> None:
    calls: list[Any] = []

    def dumps(value: Any) -> str:
        calls.append(value)
        return json.dumps(value, indent=1)

    item = Event({"a": [1, 2]}, event="j")
    first = item.encode(dumps)
    lines = [b"event: j", b"data: {", b'data:  "a": [', b"data:   1,", b"data:   2"]
    lines += [b"data:  ]", b"data: }", b"", b""]
    assert first == b"\n".join(lines)
    assert item.encode(dumps) is first
    assert encode(item, dumps) is first
    assert calls == [{"a": [1, 2]}]
    (received,) = read_both(first)
    assert received.json() == {"a": [1, 2]}


def test_text_event_is_encoded_once_when_built() -> None:
    item = Event("hello", id=1)
    assert item.encode() is item.encode()
    comment = Comment("beat")
    assert comment.encode() is comment.encode()


@pytest.mark.parametrize(
    ("item", "attribute"),
    [
        (Event("x"), "data"),
        (Event("x"), "event"),
        (Event("x"), "id"),
        (Event("x"), "retry"),
        (Comment("x"), "text"),
    ],
)
def test_events_and_comments_are_immutable(item: Event | Comment, attribute: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(item, attribute, "changed")


def test_events_compare_by_their_fields() -> None:
    assert Event("x", event="e", id=1) == Event("x", event="e", id="1")
    assert Event("x") != Event("y")
    assert hash(Event("x", retry=1)) == hash(Event("x", retry=1))


def bad_dumps_bytes(value: Any) -> Any:
    return json.dumps(value).encode()


# (how to build it, words the message must hold)
INVALID: list[tuple[Callable[[], object], list[str]]] = [
    (lambda: Event("x", event="a\nb"), ["event", "'\\n'"]),
    (lambda: Event("x", event="a\rb"), ["event", "'\\r'"]),
    (lambda: Event("x", event="\r\n"), ["event", "'\\r'"]),
    (lambda: Event("x", event="admin\n\ndata: pwned"), ["event", "another field or event"]),
    (lambda: Event("x", id="1\n"), ["id", "'\\n'"]),
    (lambda: Event("x", id="1\r"), ["id", "'\\r'"]),
    (lambda: Event("x", id="a\0b"), ["id", "NUL"]),
    (lambda: Event("x", event=5), ["event", "str", "int"]),
    (lambda: Event("x", event=b"e"), ["event", "str", "bytes"]),
    (lambda: Event("x", id=1.5), ["id", "str or an int", "float"]),
    (lambda: Event("x", id=True), ["id", "bool"]),
    (lambda: Event("x", id=b"1"), ["id", "bytes"]),
    (lambda: Event("x", retry=True), ["retry", "int", "bool"]),
    (lambda: Event("x", retry=False), ["retry", "bool"]),
    (lambda: Event("x", retry=-1), ["retry", "0 or more", "-1"]),
    (lambda: Event("x", retry=1.5), ["retry", "float"]),
    (lambda: Event("x", retry=10.0), ["retry", "float"]),
    (lambda: Event("x", retry="10"), ["retry", "str"]),
    (lambda: Event("\ud800"), ["data", "lone surrogate", "index 0"]),
    (lambda: Event("ok\nthen \udfff"), ["data", "lone surrogate"]),
    (lambda: Event("x", event="\udc80"), ["event", "surrogate"]),
    (lambda: Event("x", id="\ud83d"), ["id", "surrogate"]),
    (lambda: Event(b"raw"), ["data", "bytes", "decode"]),
    (lambda: Event(bytearray(b"raw")), ["data", "bytearray"]),
    (lambda: Comment("\ud800"), ["comment", "surrogate"]),
    (lambda: Comment(5), ["comment", "str", "int"]),
    (lambda: Comment(None), ["comment", "NoneType"]),  # type: ignore[arg-type]
    (lambda: Event({"a": 1}).encode(bad_dumps_bytes), ["JSON", "bytes", "str"]),
    (lambda: Event(["x"]).encode(lambda v: None), ["JSON", "NoneType"]),
    (lambda: Event({"a": 1}).encode(lambda v: '"\ud800"'), ["data", "surrogate"]),
]


@pytest.mark.parametrize(("build", "words"), INVALID)
def test_invalid_values_raise_one_documented_error(
    build: Callable[[], object], words: list[str]
) -> None:
    with pytest.raises(InvalidEventError) as info:
        build()
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    for word in words:
        assert word in message


INJECTIONS = [
    "hello\r\n\r\nevent: admin\r\ndata: pwned",
    "hello\n\nevent: admin\ndata: pwned",
    "hello\r\revent: admin\rdata: pwned",
    "\r",
    "a\rb",
    "\r\r\r",
    "\n\n",
    "x\r\n\r\nid: 666\r\nretry: 1\r\n\r\n",
    ": comment\n\ndata: second",
]


@pytest.mark.parametrize("data", INJECTIONS)
def test_untrusted_data_arrives_as_exactly_one_event(data: str) -> None:
    wire = Event(data).encode() + Event("next", event="n").encode()
    parser = EventStreamParser()
    events = read_both(wire)
    assert events == [
        ServerSentEvent("message", normalise(data), "", None),
        ServerSentEvent("n", "next", "", None),
    ]
    assert feed_bytewise(wire) == events
    assert parser.feed(wire) == events
    assert parser.retry is None
    assert parser.last_event_id == ""
    assert parser.comments == []


def test_a_stream_of_mixed_items_reads_the_same_whole_and_byte_by_byte() -> None:
    items: list[Event | Comment] = [item for item, _ in ENCODINGS]
    wire = b"".join(encode(item) for item in items)
    events = read_both(wire)
    assert feed_bytewise(wire) == events
    expected_data = [
        normalise(i.data if isinstance(i.data, str) else json.dumps(i.data))
        for i in items
        if isinstance(i, Event) and i.data is not None
    ]
    assert [e.data for e in events] == expected_data


# Property tests.

line_break = st.sampled_from(["\r", "\n", "\r\n"])
# Surrogate-free: a lone surrogate is rejected, as tested above.
any_char = st.characters(exclude_categories=("Cs",))
tricky = st.sampled_from(["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\ufeff", "\0"])
tricky |= st.sampled_from([":", " ", "data:", "event: x", "id: 1", "retry: 1"])
any_text = st.lists(st.one_of(st.text(any_char), line_break, tricky)).map("".join)
one_line = st.text(any_char.filter(lambda c: c not in "\r\n"))
id_text = st.text(any_char.filter(lambda c: c not in "\r\n\0"))


@PROPERTY
@given(data=any_text, event=st.none() | one_line, id=st.none() | id_text | st.integers())
def test_any_text_round_trips_as_exactly_one_event(
    data: str, event: str | None, id: str | int | None
) -> None:
    wire = Event(data, event=event, id=id).encode()
    (received,) = read_both(wire)
    assert received.data == normalise(data)
    assert received.event == (event or "message")
    assert received.id == ("" if id is None else str(id))


@PROPERTY
@given(text=any_text)
def test_any_comment_text_round_trips_as_comment_lines(text: str) -> None:
    wire = Comment(text).encode()
    result = read_stream(wire)
    assert result.events == []
    assert result.comments == normalise(text).split("\n")
    parser = EventStreamParser()
    assert parser.feed(wire) == []
    assert parser.comments == result.comments


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(any_char),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@PROPERTY
@given(value=json_values)
def test_any_json_value_round_trips(value: Any) -> None:
    if value is None or isinstance(value, str):
        value = [value]  # None means "no data" and a str is sent as text
    (received,) = read_both(Event(value).encode())
    assert received.json() == value


items = st.one_of(
    st.builds(
        Event,
        any_text,
        event=st.none() | one_line,
        id=st.none() | id_text,
        retry=st.none() | st.integers(0, 10**6),
    ),
    st.builds(Event, st.none(), id=st.none() | id_text, retry=st.none() | st.integers(0, 99)),
    st.builds(Comment, any_text),
)


@PROPERTY
@given(stream=st.lists(items, max_size=8), cuts=st.lists(st.integers(0, 2000), max_size=12))
def test_any_chunking_of_a_stream_reads_the_same(
    stream: list[Event | Comment], cuts: list[int]
) -> None:
    wire = b"".join(item.encode() for item in stream)
    whole = read_both(wire)
    assert len(whole) == sum(isinstance(i, Event) and i.data is not None for i in stream)
    bounds = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    parser = EventStreamParser()
    pieces: list[ServerSentEvent] = []
    for start, stop in itertools.pairwise(bounds):
        pieces += parser.feed(wire[start:stop])
    parser.close()
    assert pieces == whole
