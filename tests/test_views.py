"""The pub/sub blueprint through Flask's test client: requests, errors, replay, CORS."""

from __future__ import annotations

import json
from collections.abc import Iterator

import gevent
import pytest
from flask import Flask, request
from werkzeug.test import TestResponse

from flask_sse_stream import SSE, ConfigError
from flask_sse_stream.testing import ServerSentEvent, iter_events

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(SSE_HEARTBEAT_INTERVAL=None, SSE_RETRY=None, SSE_HISTORY_SIZE=5)
    return app


@pytest.fixture
def sse(app: Flask) -> SSE:
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")
    return sse


@pytest.fixture
def opened() -> Iterator[list[TestResponse]]:
    """Responses to close at the end of the test, whatever happens."""
    responses: list[TestResponse] = []
    yield responses
    for response in responses:
        response.close()


def take(response: TestResponse, n: int) -> list[ServerSentEvent]:
    events = iter_events(response)
    with gevent.Timeout(5):
        return [next(events) for _ in range(n)]


def test_a_subscriber_receives_what_is_published_with_its_id(
    app: Flask, sse: SSE, opened: list[TestResponse]
) -> None:
    response = app.test_client().get("/events?channel=chat", buffered=False)
    opened.append(response)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    with app.app_context():
        first = sse.publish({"text": "hi"}, channel="chat", event="message")
        second = sse.publish("plain", channel="chat")
    assert first != second
    events = take(response, 2)
    assert [(e.event, e.data, e.id) for e in events] == [
        ("message", '{"text": "hi"}', first),
        ("message", "plain", second),
    ]


def test_publish_returns_short_ascii_increasing_ids(app: Flask, sse: SSE) -> None:
    with app.app_context():
        ids = [sse.publish(i, channel="c") for i in range(20)]
    assert len(set(ids)) == 20
    for event_id in ids:
        assert event_id.isascii()
        assert len(event_id) <= 32


def test_replay_after_last_event_id_header(
    app: Flask, sse: SSE, opened: list[TestResponse]
) -> None:
    with app.app_context():
        ids = [sse.publish(str(i), channel="news") for i in range(4)]
    response = app.test_client().get(
        "/events?channel=news", headers={"Last-Event-ID": ids[1]}, buffered=False
    )
    opened.append(response)
    assert [e.data for e in take(response, 2)] == ["2", "3"]


def test_the_header_wins_over_the_query_parameter(
    app: Flask, sse: SSE, opened: list[TestResponse]
) -> None:
    with app.app_context():
        ids = [sse.publish(str(i), channel="news") for i in range(4)]
    response = app.test_client().get(
        f"/events?channel=news&lastEventId={ids[0]}",
        headers={"Last-Event-ID": ids[2]},
        buffered=False,
    )
    opened.append(response)
    assert [e.data for e in take(response, 1)] == ["3"]


def test_an_evicted_id_gets_the_reset_event(
    app: Flask, sse: SSE, opened: list[TestResponse]
) -> None:
    with app.app_context():
        ids = [sse.publish(str(i), channel="news") for i in range(10)]  # history keeps 5
    response = app.test_client().get(
        "/events?channel=news", headers={"Last-Event-ID": ids[0]}, buffered=False
    )
    opened.append(response)
    (reset,) = take(response, 1)
    assert reset.event == "sse-reset"
    assert reset.id == ids[-1]


@pytest.mark.parametrize("hostile", ["x" * 65536, "a\r\nevent: admin", "caf\xe9", "a\0b"])
def test_a_hostile_last_event_id_is_reset_and_never_reflected(
    app: Flask, sse: SSE, opened: list[TestResponse], hostile: str
) -> None:
    with app.app_context():
        sse.publish("x", channel="news")
    response = app.test_client().get(
        "/events", query_string={"channel": "news", "lastEventId": hostile}, buffered=False
    )
    opened.append(response)
    (reset,) = take(response, 1)
    assert reset.event == "sse-reset"
    assert hostile not in reset.id
    assert all(hostile not in value for value in response.headers.values())


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "at least one"),
        ("?channel=", "channel name"),
        ("?channel=a%20b", "channel name"),
        ("?channel=ok&channel=" + "x" * 200, "channel name"),
    ],
)
def test_missing_or_malformed_channels_get_400(
    app: Flask, sse: SSE, query: str, message: str
) -> None:
    response = app.test_client().get("/events" + query)
    assert response.status_code == 400
    assert message in response.json["error"]  # type: ignore[index]


def test_a_refused_channel_gets_403_naming_it(app: Flask, sse: SSE) -> None:
    @sse.authorize
    def only_public(channel: str) -> bool:
        return channel.startswith("public") or request.headers.get("X-Admin") == "yes"

    client = app.test_client()
    response = client.get("/events?channel=public-1&channel=secret")
    assert response.status_code == 403
    assert response.json == {
        "error": "not allowed to subscribe to this channel",
        "channel": "secret",
    }
    allowed = client.get("/events?channel=secret", headers={"X-Admin": "yes"}, buffered=False)
    try:
        assert allowed.status_code == 200
    finally:
        allowed.close()


def _unavailable(response: TestResponse) -> tuple[int, dict[str, object]]:
    """The retry and the ``sse-unavailable`` event's data of a come-back-later answer."""
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert b"\nid" not in b"\n" + response.get_data()  # the browser keeps its Last-Event-ID
    (event,) = iter_events(response)
    assert event.event == "sse-unavailable"
    assert event.retry is not None
    return event.retry, json.loads(event.data)


def test_past_max_connections_new_streams_are_told_to_come_back_later(
    app: Flask, opened: list[TestResponse]
) -> None:
    """Issue 11, item 3: a 200 stream with a jittered retry: and a reason, never a 503."""
    app.config.update(SSE_MAX_CONNECTIONS=1, SSE_RETRY=2000)
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")
    client = app.test_client()
    first = client.get("/events?channel=a", buffered=False)
    opened.append(first)
    next(iter(first.response))  # the stream is open once it has started
    retries = set()
    for _ in range(20):
        refused = client.get("/events?channel=a")
        retry, data = _unavailable(refused)
        assert 2000 <= retry < 4000
        assert data["reason"] == "full"
        assert data["retry"] == retry
        assert int(refused.headers["Retry-After"]) >= 2
        retries.add(retry)
    assert len(retries) > 1, "the retry is not jittered"


def test_max_connections_counts_streams_before_they_start(
    app: Flask, opened: list[TestResponse]
) -> None:
    """Item 10: a burst of requests, none started yet, cannot overshoot the limit."""
    app.config["SSE_MAX_CONNECTIONS"] = 3
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")
    client = app.test_client()
    burst = [client.get("/events?channel=a", buffered=False) for _ in range(5)]
    opened.extend(burst)
    assert [r.status_code for r in burst] == [200] * 5
    # A refusal is a finished body, with a length; a stream has none.
    refused = ["Content-Length" in r.headers for r in burst]
    assert refused == [False, False, False, True, True]
    assert _unavailable(burst[3])[1]["reason"] == "full"
    burst[0].close()
    again = client.get("/events?channel=a", buffered=False)
    opened.append(again)
    assert "Content-Length" not in again.headers  # a slot was freed: a real stream


def test_cors_allows_listed_origins_with_credentials(app: Flask) -> None:
    app.config.update(SSE_CORS_ORIGINS=["https://app.example"], SSE_CORS_CREDENTIALS=True)
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")
    client = app.test_client()
    preflight = client.options(
        "/events?channel=a",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Last-Event-ID" in preflight.headers["Access-Control-Allow-Headers"]
    assert "Origin" in preflight.headers["Vary"]
    other = client.options("/events?channel=a", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    refused = client.get("/events", headers={"Origin": "https://app.example"})
    assert refused.status_code == 400
    assert refused.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_cors_wildcard_with_credentials_is_refused_at_init() -> None:
    app = Flask(__name__)
    app.config.update(SSE_CORS_ORIGINS="*", SSE_CORS_CREDENTIALS=True)
    with pytest.raises(ConfigError, match="SSE_CORS_ORIGINS"):
        SSE(app)


def test_metrics_endpoint_serves_prometheus_text_when_enabled(app: Flask) -> None:
    app.config["SSE_METRICS"] = True
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")
    with app.app_context():
        sse.publish("x", channel="a")
    response = app.test_client().get("/events/metrics")
    assert response.status_code == 200
    assert "sse_events_published_total 1" in response.text


def test_metrics_endpoint_is_off_by_default(app: Flask, sse: SSE) -> None:
    assert app.test_client().get("/events/metrics").status_code == 404


def test_stats_count_streams_closed_by_reason(app: Flask, sse: SSE) -> None:
    response = app.test_client().get("/events?channel=a", buffered=False)
    next(iter(response.response))
    response.close()
    with app.app_context():
        stats = sse.stats()
    assert stats["open_streams"] == 0
    assert sum(stats["closed"].values()) == 1
    assert set(stats["heartbeats"]) == {"direct", "handler"}


def test_a_view_can_stream_a_subscription(app: Flask, sse: SSE, opened: list[TestResponse]) -> None:
    @app.get("/me")
    @sse.stream
    def me() -> Iterator[object]:
        yield from sse.subscribe(["user-1"])

    response = app.test_client().get("/me", buffered=False)
    opened.append(response)
    events = iter_events(response)
    first = gevent.spawn(next, events)  # starts the stream and waits for an event
    with gevent.Timeout(5), app.app_context():
        while not sse.stats()["subscribers"].get("user-1"):
            gevent.sleep(0.001)
        sse.publish("hello", channel="user-1")
        assert first.get().data == "hello"


def test_a_subscriber_that_falls_behind_is_dropped_logged_and_counted(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    app.config["SSE_QUEUE_SIZE"] = 5
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")
    slow = app.test_client().get("/events?channel=busy", buffered=False)
    with app.app_context():
        for i in range(10):  # nobody reads the stream meanwhile
            sse.publish(str(i), channel="busy")
    try:
        with gevent.Timeout(5):
            # The preamble, then the end: the stream does not wait for more.
            assert b"".join(slow.response) == b":\n\n"
    finally:
        slow.close()
    assert "Dropped a slow subscriber of busy" in caplog.text
    with app.app_context():
        stats = sse.stats()
    assert stats["dropped_slow"] == 1
    assert stats["subscribers"] == {}
