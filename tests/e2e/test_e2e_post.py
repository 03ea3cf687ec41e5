"""LLM-style POST streams over real sockets: tokens as they come, [DONE], and the stop."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from .helpers import RawClient, Server, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

_tokens = itertools.count()


def new_token(server: Server, name: str) -> str:
    return f"{name}-{server.kind}-{next(_tokens)}"


def test_a_post_token_stream_sends_each_token_as_a_chunk_then_done(server: Server) -> None:
    with RawClient(server.port) as client:
        client.request("/tokens", method="POST", json_body={"n": 4, "gap": 0.02})
        response = client.response()
        assert response.status_code == 200
        assert dict(response.headers)[b"content-type"] == b"text/event-stream; charset=utf-8"
        chunks = client.chunks_until_end()
    assert chunks[0] == b":\n\n"  # retry=None: a comment opens the stream
    data = [event.data for event in client.events]
    assert data[-1] == "[DONE]"
    deltas = [json.loads(d)["choices"][0]["delta"] for d in data[:-1]]
    assert [d.get("content") for d in deltas] == ["", "tok0 ", "tok1 ", "tok2 ", "tok3 ", None]
    # Each token left on its own, as it was made (20 ms apart).
    assert len(chunks) >= 5


@pytest.mark.parametrize("slow_upload", [False, True], ids=["body-at-once", "slow-upload"])
def test_closing_a_post_stream_stops_the_model_within_a_second(
    any_server: Server, slow_upload: bool
) -> None:
    server = any_server
    token = new_token(server, "post")
    # One token, then the model waits far longer than the test for the next:
    # only the socket watch can see the client go. The view reads its body
    # in its generator; body bytes that arrive once the stream has started
    # must not be taken for the close, nor spend the watch.
    body = {"n": 2, "gap": 600, "padding": "x" * 65536}
    client = RawClient(server.port)
    try:
        client.request(
            f"/tokens?token={token}",
            method="POST",
            json_body=body,
            hold_back=32768 if slow_upload else 0,
        )
        if slow_upload:
            time.sleep(0.3)  # the client's pace, not a wait for the server
            client.send_held()
        assert client.response().status_code == 200
        while not any("tok0" in event.data for event in client.events):
            assert client.chunk() is not None
        wait_for(lambda: token in server.state()["started"], 5)
    finally:
        client.close()
    closed_at = time.monotonic()
    finalized = wait_for(lambda: server.state()["finalized"].get(token), 3)
    assert finalized - closed_at < 1
    assert server.state()["closed"][token] == "disconnect"
