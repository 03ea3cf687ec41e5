"""POST streams of tokens in the OpenAI format, read back through the test client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import gevent
import pytest
from flask import Flask, request

from flask_sse_stream import SSE, completion_chunks
from flask_sse_stream._tokens import DONE
from flask_sse_stream.testing import iter_events

pytestmark = pytest.mark.timeout(10)


def test_completion_chunks_wrap_tokens_in_the_openai_format() -> None:
    items = list(completion_chunks(iter(["Hel", "lo"]), model="fake-1", id="chatcmpl-1"))
    assert items[-1] == DONE == "[DONE]"
    chunks = items[:-1]
    assert all(isinstance(c, dict) for c in chunks)
    assert {(c["id"], c["object"], c["model"]) for c in chunks} == {  # type: ignore[index]
        ("chatcmpl-1", "chat.completion.chunk", "fake-1")
    }
    assert [c["choices"][0] for c in chunks] == [  # type: ignore[index]
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
        {"index": 0, "delta": {"content": "Hel"}, "finish_reason": None},
        {"index": 0, "delta": {"content": "lo"}, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": "stop"},
    ]


def test_closing_the_chunks_closes_the_tokens_at_once() -> None:
    closed: list[str] = []

    def model() -> Iterator[str]:
        try:
            while True:
                yield "tok"
        finally:
            closed.append("finally")

    tokens = model()  # held here too: only an explicit close() runs its finally now
    chunks = completion_chunks(tokens, model="m")
    next(chunks)
    next(chunks)
    chunks.close()
    assert closed == ["finally"]


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(SSE_HEARTBEAT_INTERVAL=None)
    sse = SSE(app)

    @app.post("/v1/chat/completions")
    @sse.stream(retry=None)
    def completions() -> Iterator[object]:
        body = request.get_json()  # in the generator: the body was read before it starts
        words = body["messages"][-1]["content"].split()
        yield from completion_chunks(iter(words), model=body["model"])

    return app


def test_a_post_stream_reads_its_json_body_and_ends_with_done(app: Flask) -> None:
    response = app.test_client().post(
        "/v1/chat/completions",
        json={"model": "fake-1", "messages": [{"role": "user", "content": "one two three"}]},
        buffered=False,
    )
    try:
        assert response.status_code == 200
        with gevent.Timeout(5):
            events = list(iter_events(response))
    finally:
        response.close()
    assert events[-1].data == "[DONE]"
    contents = [json.loads(e.data)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents == ["", "one", "two", "three", None]
