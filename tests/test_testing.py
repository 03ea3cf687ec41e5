"""Tests of flask_sse_stream.testing, the public stream parser."""

from __future__ import annotations

import pytest

from flask_sse_stream.testing import EventStreamParser, ServerSentEvent, parse


def test_parse_reads_fields_and_persists_id() -> None:
    body = b"retry: 10\n\n: hi\nid: 1\nevent: a\ndata: x\r\ndata:y\r\rdata\n\n"
    assert parse(body) == [
        ServerSentEvent("a", "x\ny", "1", None),
        ServerSentEvent("message", "", "1", None),
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_small_chunks_give_the_same_events(size: int) -> None:
    body = "\ufeffid: 7\r\ndata: \u20ac\r\n\r\n: beat\rdata: b\r\r".encode()
    parser = EventStreamParser()
    events = []
    for i in range(0, len(body), size):
        events += parser.feed(body[i : i + size])
    parser.close()
    assert events == parse(body)
    assert [e.data for e in events] == ["\u20ac", "b"]
    assert parser.comments == ["beat"]
