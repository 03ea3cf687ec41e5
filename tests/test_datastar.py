"""Datastar: datastar-py's events through streams and channels, and the page's signals."""

from __future__ import annotations

import json
from collections.abc import Iterator

import gevent
import pytest
from datastar_py import ServerSentEventGenerator as DS
from datastar_py.consts import ElementPatchMode
from flask import Flask, jsonify
from werkzeug.test import TestResponse

from flask_sse_stream import SSE, InvalidEventError
from flask_sse_stream.datastar import is_datastar_event, read_signals, to_event
from flask_sse_stream.testing import ServerSentEvent, iter_events, parse

pytestmark = pytest.mark.timeout(10)

HTML = '<ul id="list">\n  <li>one</li>\n\n  <li>two: data: x</li>\n</ul>'

EVENTS = [
    DS.patch_elements(HTML),
    DS.patch_elements(HTML, selector="#main", mode=ElementPatchMode.APPEND, event_id="7"),
    DS.patch_elements("<p>x</p>", use_view_transition=True, retry_duration=2500),
    DS.remove_elements("#gone"),
    DS.patch_signals({"count": 3, "name": "a\nb"}),
    DS.patch_signals({"draft": ""}, only_if_missing=True),
    DS.execute_script("console.log('hi')"),
]


@pytest.mark.parametrize("text", EVENTS, ids=lambda text: text.split("\n")[0])
def test_to_event_sends_what_datastar_py_wrote(text: str) -> None:
    assert is_datastar_event(text)
    assert parse(to_event(text).encode()) == parse(text.encode())
    assert len(parse(text.encode())) == 1


@pytest.mark.parametrize(
    "text",
    [
        DS.patch_elements("<p>x</p>", selector="#a\nevent: datastar-patch-signals"),
        DS.patch_elements("<p>x</p>", event_id="1\n\ndata: signals {}"),
        DS.patch_elements("<p>x</p>", selector="#a\r"),
        "event: datastar-patch-elements\ndata: elements <p></p>\n",  # not ended
        "data: elements <p></p>\nevent: late\n\n",
        "event: datastar-patch-elements\nretry: soon\n\n",
    ],
)
def test_to_event_refuses_text_that_is_not_exactly_one_event(text: str) -> None:
    with pytest.raises(InvalidEventError):
        to_event(text)


def test_a_plain_str_is_not_a_datastar_event() -> None:
    assert not is_datastar_event("event: datastar-patch-elements\ndata: elements <p></p>\n\n")


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(SSE_HEARTBEAT_INTERVAL=None)
    return app


@pytest.fixture
def sse(app: Flask) -> SSE:
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")

    @app.route("/updates", methods=["GET", "POST", "DELETE"])
    @sse.stream
    def updates() -> Iterator[str]:
        signals = read_signals() or {}
        yield DS.patch_elements(HTML)
        yield DS.patch_signals({"seen": signals.get("count", 0) + 1})

    @app.route("/signals", methods=["GET", "POST", "DELETE"])
    def signals() -> object:
        return jsonify(read_signals())

    return sse


def take(response: TestResponse, n: int) -> list[ServerSentEvent]:
    events = iter_events(response)
    try:
        with gevent.Timeout(5):
            return [next(events) for _ in range(n)]
    finally:
        response.close()


DATASTAR = {"Datastar-Request": "true"}


def test_a_view_yields_datastar_events_and_reads_signals_from_a_post_body(
    app: Flask, sse: SSE
) -> None:
    response = app.test_client().post(
        "/updates", json={"count": 41}, headers=DATASTAR, buffered=False
    )
    assert response.mimetype == "text/event-stream"
    elements, signals = take(response, 2)
    assert elements.event == "datastar-patch-elements"
    assert elements.data == "\n".join(f"elements {line}" for line in HTML.split("\n"))
    assert (signals.event, signals.data) == ("datastar-patch-signals", 'signals {"seen":42}')


def test_read_signals_as_datastar_sends_them(app: Flask, sse: SSE) -> None:
    client = app.test_client()
    query = {"datastar": json.dumps({"q": "x"})}
    assert client.get("/signals", query_string=query, headers=DATASTAR).json == {"q": "x"}
    assert client.delete("/signals", query_string=query, headers=DATASTAR).json == {"q": "x"}
    assert client.post("/signals", json={"q": "y"}, headers=DATASTAR).json == {"q": "y"}
    # Not Datastar's request, or no signals: None.
    assert client.get("/signals", query_string=query).json is None
    assert client.get("/signals", headers=DATASTAR).json is None
    assert client.post("/signals", data={"q": "form"}, headers=DATASTAR).json is None
    # Malformed signals: 400.
    bad = {"datastar": "{nope"}
    assert client.get("/signals", query_string=bad, headers=DATASTAR).status_code == 400
    assert client.post("/signals", json=[1, 2], headers=DATASTAR).status_code == 400
    assert (
        client.post(
            "/signals", data="{nope", content_type="application/json", headers=DATASTAR
        ).status_code
        == 400
    )


def test_publish_carries_datastar_events_to_subscribers(app: Flask, sse: SSE) -> None:
    response = app.test_client().get("/events?channel=presence", buffered=False)
    with app.app_context():
        event_id = sse.publish(DS.patch_signals({"online": 12}), channel="presence")
        with pytest.raises(TypeError):
            sse.publish(DS.patch_signals({"online": 1}), channel="presence", event="x")
    (event,) = take(response, 1)
    assert (event.event, event.data, event.id) == (
        "datastar-patch-signals",
        'signals {"online":12}',
        event_id,
    )
