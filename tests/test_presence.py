"""Presence with the in-process broker, through Flask's test client.

Identities from ``@sse.identify`` and from ``@sse.authorize``; ``sse.presence``;
join and leave events once per identity, with a grace period; the blueprint's
``/presence``; the operator page's access rules and snapshot. Across workers
with Redis: ``tests/broker/test_presence_redis.py`` and ``tests/e2e``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from flask import Flask, request
from werkzeug.test import TestResponse

from flask_sse_stream import SSE, ConfigError, Presence
from flask_sse_stream._presence import Tracker
from flask_sse_stream.testing import ServerSentEvent, iter_events

pytestmark = pytest.mark.timeout(15)

GRACE = 0.3


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        SSE_HEARTBEAT_INTERVAL=None,
        SSE_RETRY=None,
        SSE_PRESENCE=["room:*"],
        SSE_PRESENCE_GRACE=GRACE,
    )
    return app


@pytest.fixture
def sse(app: Flask) -> SSE:
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")

    @sse.identify
    def who() -> Any:
        name = request.args.get("user")
        return {"name": name} if name else None

    return sse


class Stream:
    """One blueprint stream of the test client, started (its preamble read)."""

    def __init__(self, app: Flask, query: str, **kwargs: Any) -> None:
        self.response: TestResponse = app.test_client().get(
            f"/events?{query}", buffered=False, **kwargs
        )
        assert self.response.status_code == 200, self.response.get_data()
        self.events = iter_events(self.response)
        self.seen: list[ServerSentEvent] = []
        next(iter(self.response.response))  # the preamble: the stream has started

    def until(self, done: Any, timeout: float = 5) -> list[ServerSentEvent]:
        with gevent.Timeout(timeout):
            while not done(self.seen):
                self.seen.append(next(self.events))
        return self.seen

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def streams() -> Iterator[list[Stream]]:
    opened: list[Stream] = []
    yield opened
    for stream in opened:
        stream.close()


def open_stream(app: Flask, opened: list[Stream], query: str, **kwargs: Any) -> Stream:
    stream = Stream(app, query, **kwargs)
    opened.append(stream)
    return stream


def tracker(app: Flask) -> Tracker:
    return app.extensions["sse"].tracker  # type: ignore[no-any-return]


def settled(app: Flask, timeout: float = 5) -> None:
    """Wait until no leave is waiting for its grace period."""
    deadline = time.monotonic() + timeout
    while tracker(app)._timers:
        assert time.monotonic() < deadline, "a grace timer never fired"
        gevent.sleep(0.01)


def presence_events(seen: list[ServerSentEvent]) -> list[tuple[str, str]]:
    return [
        (e.event, json.loads(e.data)["name"]) for e in seen if e.event in ("sse-join", "sse-leave")
    ]


def test_each_identity_is_listed_once_and_every_connection_counted(
    app: Flask, sse: SSE, streams: list[Stream]
) -> None:
    for query in ("user=ada", "user=ada", "user=bob", ""):
        open_stream(app, streams, f"channel=lobby&{query}")
    with app.app_context():
        answer = sse.presence("lobby")
    assert answer == Presence("lobby", ({"name": "ada"}, {"name": "bob"}), 4)
    for stream in streams[:3]:
        stream.close()
    with app.app_context():
        assert sse.presence("lobby") == Presence("lobby", (), 1)


def test_the_authorization_hooks_return_value_is_the_identity(streams: list[Stream]) -> None:
    app = Flask(__name__)
    app.config.update(SSE_HEARTBEAT_INTERVAL=None, SSE_PRESENCE=True)
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")

    @sse.authorize
    def allow(channel: str) -> Any:
        token = request.headers.get("Authorization")
        return {"id": 7, "name": "Ada"} if token == "ada" else token == "guest"

    open_stream(app, streams, "channel=a", headers={"Authorization": "ada"})
    open_stream(app, streams, "channel=a", headers={"Authorization": "guest"})
    response = app.test_client().get("/events?channel=a")
    assert response.status_code == 403
    with app.app_context():
        assert sse.presence("a") == Presence("a", ({"id": 7, "name": "Ada"},), 2)


def test_join_and_leave_go_out_once_per_identity_in_order_with_other_events(
    app: Flask, sse: SSE, streams: list[Stream]
) -> None:
    observer = open_stream(app, streams, "channel=room:1")
    first_tab = open_stream(app, streams, "channel=room:1&user=ada")
    second_tab = open_stream(app, streams, "channel=room:1&user=ada")
    with app.app_context():
        sse.publish("hello", channel="room:1")
    first_tab.close()
    # A reload within the grace period: neither a leave nor a join.
    second_tab.close()
    open_stream(app, streams, "channel=room:1&user=ada").close()
    settled(app)
    with app.app_context():
        assert sse.presence("room:1").members == ()
        sse.publish("bye", channel="room:1")
    seen = observer.until(lambda seen: seen and seen[-1].data == "bye")
    assert [(e.event, e.data) for e in seen if e.event == "message"] == [
        ("message", "hello"),
        ("message", "bye"),
    ]
    assert presence_events(seen) == [("sse-join", "ada"), ("sse-leave", "ada")]
    kinds = [e.event for e in seen]
    assert kinds.index("sse-join") < kinds.index("message")  # in publish order
    assert all(e.id for e in seen)  # numbered like any event: replayed on reconnect


def test_a_leave_waits_for_the_grace_period(app: Flask, sse: SSE, streams: list[Stream]) -> None:
    observer = open_stream(app, streams, "channel=room:2")
    ada = open_stream(app, streams, "channel=room:2&user=ada")
    observer.until(lambda seen: len(seen) == 1)
    left_at = time.monotonic()
    ada.close()
    seen = observer.until(lambda seen: len(seen) == 2)
    assert time.monotonic() - left_at >= GRACE * 0.9
    assert presence_events(seen) == [("sse-join", "ada"), ("sse-leave", "ada")]


def test_channels_without_a_pattern_get_no_presence_events(
    app: Flask, sse: SSE, streams: list[Stream]
) -> None:
    observer = open_stream(app, streams, "channel=lobby")
    open_stream(app, streams, "channel=lobby&user=ada").close()
    settled(app)
    with app.app_context():
        sse.publish("marker", channel="lobby")
    assert [e.data for e in observer.until(lambda seen: len(seen) == 1)] == ["marker"]


def test_the_presence_endpoint_answers_behind_the_same_authorization(
    app: Flask, sse: SSE, streams: list[Stream]
) -> None:
    @sse.authorize
    def allow(channel: str) -> bool:
        return not channel.startswith("private")

    open_stream(app, streams, "channel=room:3&user=ada")
    client = app.test_client()
    response = client.get("/events/presence?channel=room:3")
    assert response.status_code == 200
    assert response.get_json() == {
        "channel": "room:3",
        "members": [{"name": "ada"}],
        "connections": 1,
    }
    assert client.get("/events/presence?channel=private-x").status_code == 403
    assert client.get("/events/presence?channel=bad%20name").status_code == 400
    assert client.get("/events/presence").status_code == 400


def test_presence_is_off_by_default() -> None:
    app = Flask(__name__)
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")
    assert app.test_client().get("/events/presence?channel=a").status_code == 404
    with app.app_context(), pytest.raises(RuntimeError, match="SSE_PRESENCE"):
        sse.presence("a")


@pytest.mark.parametrize("value", ["room:*", [""], [3], 1])
def test_sse_presence_is_checked(value: Any) -> None:
    app = Flask(__name__)
    app.config["SSE_PRESENCE"] = value
    with pytest.raises(ConfigError, match="SSE_PRESENCE"):
        SSE(app)


def test_an_identity_that_is_not_json_is_refused_before_the_stream_starts(
    app: Flask, sse: SSE
) -> None:
    @sse.identify
    def who() -> Any:
        return {"name": object()}

    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(TypeError, match="JSON-able"):
        app.test_client().get("/events?channel=lobby", buffered=False)


def test_the_operator_page_needs_sse_admin_and_the_apps_check(
    app: Flask, streams: list[Stream]
) -> None:
    app.config["SSE_ADMIN"] = True
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")
    client = app.test_client()
    assert client.get("/events/admin").status_code == 403  # no check registered
    allowed = {"yes": False}

    @sse.admin_check
    def check() -> bool:
        return allowed["yes"]

    assert client.get("/events/admin").status_code == 403
    allowed["yes"] = True
    page = client.get("/events/admin")
    assert page.status_code == 200
    assert b'EventSource("admin/stream")' in page.data
    open_stream(app, streams, "channel=room:9")
    with app.app_context():
        sse.publish("x", channel="room:9")
    snap = client.get("/events/admin/snapshot").get_json()
    assert snap["total"]["published"] == 1
    assert snap["total"]["subscribers"] == 1
    assert snap["channels"] == [
        {"channel": "room:9", "subscribers": 1, "history": 1, "members": [], "connections": 1}
    ]
    assert len(snap["workers"]) == 1


def test_the_operator_page_is_off_by_default(app: Flask, sse: SSE) -> None:
    sse.admin_check(lambda: True)
    assert app.test_client().get("/events/admin").status_code == 404
    assert app.test_client().get("/events/admin/stream").status_code == 404
