"""Rendered templates as event data: in a stream, and published from outside a request."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest
from flask import Flask, url_for
from jinja2 import DictLoader
from werkzeug.test import TestResponse

from flask_sse_stream import SSE, Event, render_fragment
from flask_sse_stream.testing import ServerSentEvent, iter_events

pytestmark = pytest.mark.timeout(10)

# Blank lines, indentation, a CRLF and a line that looks like a field: the
# browser must get the same HTML back, as one event.
ROW = (
    '<tr id="row-{{ n }}">\n'
    "  <td>{{ n }}</td>\n"
    "\n"
    "  <td><pre>{{ text }}</pre></td>\r\n"
    '  <td><a href="{{ url_for("index") }}">home</a></td>\n'
    "</tr>"
)


def rendered_row(n: int, text: str, home: str = "/") -> str:
    """What ROW renders to, as a browser reads it back (CRLF becomes LF)."""
    return (
        f'<tr id="row-{n}">\n  <td>{n}</td>\n\n  <td><pre>{text}</pre></td>\n'
        f'  <td><a href="{home}">home</a></td>\n</tr>'
    )


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(SSE_HEARTBEAT_INTERVAL=None, SERVER_NAME="dash.test")
    app.jinja_env.loader = DictLoader({"row.html": ROW, "where.html": "{{ where }}"})

    @app.get("/")
    def index() -> str:
        return "home"

    return app


@pytest.fixture
def sse(app: Flask) -> SSE:
    sse = SSE(app)
    app.register_blueprint(sse.blueprint, url_prefix="/events")

    @app.get("/rows")
    @sse.stream
    def rows() -> Iterator[Event]:
        for n in range(2):
            yield Event(render_fragment("row.html", n=n, text="event: x\ndata: y"), event="row")

    return sse


def take(response: TestResponse, n: int) -> list[ServerSentEvent]:
    events = iter_events(response)
    try:
        with gevent.Timeout(5):
            return [next(events) for _ in range(n)]
    finally:
        response.close()


def test_a_template_rendered_inside_a_stream_arrives_as_one_event_with_its_lines_intact(
    app: Flask, sse: SSE
) -> None:
    events = take(app.test_client().get("/rows", buffered=False), 2)
    assert [(e.event, e.data) for e in events] == [
        ("row", rendered_row(n, "event: x\ndata: y")) for n in range(2)
    ]


def test_a_fragment_published_outside_any_context_reaches_subscribers_intact(
    app: Flask, sse: SSE
) -> None:
    response = app.test_client().get("/events?channel=dash", buffered=False)
    assert response.status_code == 200

    def publisher() -> str:  # a greenlet of its own: no app or request context
        html = render_fragment("row.html", app=app, n=7, text="a <b>&amp;</b>")
        return sse.publish(html, channel="dash", event="row", app=app)

    event_id = gevent.spawn(publisher).get(timeout=5)
    (event,) = take(response, 1)
    assert (event.event, event.id) == ("row", event_id)
    # Outside a request url_for builds external URLs, from SERVER_NAME.
    assert event.data == rendered_row(7, "a &lt;b&gt;&amp;amp;&lt;/b&gt;", "http://dash.test/")


def test_render_fragment_outside_any_context_without_the_app_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="pass app=app"):
        render_fragment("row.html", n=1, text="")


def test_render_fragment_given_another_app_renders_in_that_app(app: Flask) -> None:
    other = Flask("other")
    other.jinja_env.loader = DictLoader({"where.html": "{{ config.WHERE }}"})
    other.config["WHERE"] = "other"
    app.config["WHERE"] = "first"
    with app.app_context():
        assert render_fragment("where.html", app=other) == "other"
        assert url_for("index") == "http://dash.test/"  # the first app's context is back


def test_publish_takes_a_whole_event_and_refuses_fields_given_twice(app: Flask, sse: SSE) -> None:
    response = app.test_client().get("/events?channel=dash", buffered=False)
    with app.app_context():
        sse.publish(Event({"n": 1}, event="json", id="e-1"), channel="dash")
        with pytest.raises(TypeError, match="set them on the event"):
            sse.publish(Event("x"), channel="dash", event="other")
    (event,) = take(response, 1)
    assert (event.event, event.id, event.json()) == ("json", "e-1", {"n": 1})
