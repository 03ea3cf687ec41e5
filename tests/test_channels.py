"""Checking what a stream request asks for: channel names and the last event id."""

from __future__ import annotations

import pytest

from flask_sse_stream._channels import (
    MAX_ID_LENGTH,
    UNKNOWN_ID,
    InvalidChannelError,
    check_channel,
    last_event_id,
)


@pytest.mark.parametrize(
    "name", ["a", "chat", "user-42", "room:7", "a.b_c@d", "0", "x" * 128, "Z9:-_.@"]
)
def test_valid_channel_names_pass(name: str) -> None:
    assert check_channel(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-lead", ".lead", "x" * 129, "a b", "a/b", "a\nb", "a\rb", "a\0b", "é", "a?b", "a&b"],
)
def test_malformed_channel_names_are_refused_without_echoing_much(name: str) -> None:
    with pytest.raises(InvalidChannelError, match="channel name") as info:
        check_channel(name)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("headers", "args", "expected"),
    [
        ({}, {}, None),
        ({"Last-Event-ID": "abc-1"}, {}, "abc-1"),
        ({}, {"lastEventId": "abc-2"}, "abc-2"),
        ({"Last-Event-ID": "from-header"}, {"lastEventId": "from-query"}, "from-header"),
        ({"Last-Event-ID": ""}, {"lastEventId": "from-query"}, "from-query"),
        ({"Last-Event-ID": ""}, {}, None),
    ],
)
def test_last_event_id_prefers_the_header(
    headers: dict[str, str], args: dict[str, str], expected: str | None
) -> None:
    assert last_event_id(headers.get("Last-Event-ID"), args.get("lastEventId")) == expected


@pytest.mark.parametrize(
    "hostile",
    [
        "x" * (MAX_ID_LENGTH + 1),
        "x" * 65536,
        "a\r\nSet-Cookie: x=1",
        "a\nb",
        "a\0b",
        "a b",
        "\xff\xfe",  # invalid UTF-8 bytes, as werkzeug hands them over (latin-1)
        "caf\xe9",
    ],
)
def test_hostile_last_event_ids_become_unknown_and_are_never_echoed(hostile: str) -> None:
    assert last_event_id(hostile, None) == UNKNOWN_ID
    assert last_event_id(None, hostile) == UNKNOWN_ID


def test_an_id_of_the_longest_allowed_length_is_kept() -> None:
    assert last_event_id("x" * MAX_ID_LENGTH, None) == "x" * MAX_ID_LENGTH
