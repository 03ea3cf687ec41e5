"""The Flask extension, driven through Flask's test client (no server)."""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Iterator
from typing import Any, get_origin, get_type_hints

import gevent
import gevent.event
import pytest
from flask import (
    Flask,
    abort,
    current_app,
    g,
    has_app_context,
    has_request_context,
    request,
    session,
)
from flask.json.provider import DefaultJSONProvider
from werkzeug.test import TestResponse

from flask_sse_stream import (
    SSE,
    Broker,
    CloseReason,
    Comment,
    ConfigError,
    Event,
    InvalidEventError,
    Stats,
)
from flask_sse_stream._extension import _ViewContexts

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test", SSE_HEARTBEAT_INTERVAL=None)
    return app


@pytest.fixture
def sse(app: Flask) -> SSE:
    return SSE(app)


def chunks(response: TestResponse, n: int) -> list[bytes]:
    """Take the first ``n`` chunks of a streamed response, then close it."""
    it = iter(response.response)
    try:
        return [next(it) for _ in range(n)]
    finally:
        response.close()


def body(response: TestResponse) -> bytes:
    """Read a finite stream to its end."""
    try:
        return b"".join(response.response)
    finally:
        response.close()


# Registration and configuration


def test_init_app_keeps_state_in_app_extensions_not_on_the_extension() -> None:
    sse = SSE()
    first, second = Flask("first"), Flask("second")
    first.config["SSE_RETRY"] = 100
    sse.init_app(first)
    sse.init_app(second)
    assert not hasattr(sse, "app")
    assert first.extensions["sse"].config.retry == 100
    assert second.extensions["sse"].config.retry == 3000


def test_defaults_are_written_into_app_config(app: Flask, sse: SSE) -> None:
    assert app.config["SSE_RETRY"] == 3000
    assert app.config["SSE_WRITE_TIMEOUT"] == 30
    assert app.config["SSE_BUFFER_SIZE"] == 64
    assert app.config["SSE_HEARTBEAT_INTERVAL"] is None  # the fixture's own value stays


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SSE_HEARTBEAT_INTERVAL", "15"),
        ("SSE_HEARTBEAT_INTERVAL", -1),
        ("SSE_HEARTBEAT_INTERVAL", True),
        ("SSE_RETRY", 1.5),
        ("SSE_RETRY", -1),
        ("SSE_RETRY", False),
        ("SSE_WRITE_TIMEOUT", "30s"),
        ("SSE_BUFFER_SIZE", 0),
        ("SSE_BUFFER_SIZE", 2.0),
    ],
)
def test_bad_config_is_refused_at_init_app_naming_the_key(key: str, value: Any) -> None:
    app = Flask(__name__)
    app.config[key] = value
    with pytest.raises(ConfigError, match=key):
        SSE(app)


def test_a_stream_of_an_app_without_init_app_says_what_to_do() -> None:
    sse = SSE()
    app = Flask(__name__)

    @app.get("/s")
    @sse.stream
    def s() -> Iterator[str]:
        yield "x"

    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError, match="init_app"):
        app.test_client().get("/s")


@pytest.mark.parametrize("second", ["SSE(app)", "sse.init_app(app)", "SSE().init_app(app)"])
def test_a_second_registration_on_the_same_app_is_refused_and_keeps_the_first(
    second: str,
) -> None:
    app = Flask(__name__)
    sse = SSE(app)
    state = app.extensions["sse"]
    with app.app_context():
        sse.publish("kept", channel="c")
        with pytest.raises(RuntimeError, match=r"already registered.*init_app\(app\) once"):
            eval(second, {"SSE": SSE, "sse": sse, "app": app})
        assert app.extensions["sse"] is state
        assert sse.stats()["published"] == 1


def test_a_refused_config_leaves_the_app_free_to_register_again() -> None:
    app = Flask(__name__)
    app.config["SSE_RETRY"] = -1
    with pytest.raises(ConfigError):
        SSE(app)
    app.config["SSE_RETRY"] = 10
    SSE(app)
    assert app.extensions["sse"].config.retry == 10


@pytest.mark.parametrize(
    ("method", "parameter", "where"),
    [
        ("stream", "heartbeat", "<SSE_HEARTBEAT_INTERVAL>"),
        ("stream", "retry", "<SSE_RETRY>"),
        ("response", "heartbeat", "<SSE_HEARTBEAT_INTERVAL>"),
        ("response", "retry", "<SSE_RETRY>"),
        ("subscribe", "last_id", "<the request's Last-Event-ID>"),
    ],
)
def test_defaults_in_signatures_say_where_the_value_comes_from(
    method: str, parameter: str, where: str
) -> None:
    default = inspect.signature(getattr(SSE, method)).parameters[parameter].default
    assert repr(default) == where


def test_subscribe_takes_a_list_of_channels_as_the_broker_does(app: Flask, sse: SSE) -> None:
    ours = inspect.signature(SSE.subscribe).parameters["channels"]
    brokers = inspect.signature(Broker.subscribe).parameters["channels"]
    assert ours.kind is brokers.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert ours.annotation == brokers.annotation == "Sequence[str]"
    with app.test_request_context():
        with pytest.raises(TypeError, match=re.escape("sse.subscribe(['chat'])")):
            sse.subscribe("chat")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="at least one"):
            sse.subscribe([])
        with sse.subscribe(("a", "b")) as subscription:
            assert subscription.channels == ("a", "b")


def test_stats_has_exactly_the_keys_of_its_type(app: Flask, sse: SSE) -> None:
    with app.app_context():
        stats = sse.stats()
    hints = get_type_hints(Stats)
    assert set(stats) == set(hints)
    for key, hint in hints.items():
        assert isinstance(stats[key], get_origin(hint) or hint), key  # type: ignore[literal-required]


def test_publish_with_a_key_conflates_for_a_subscriber_that_lags() -> None:
    app = Flask(__name__)
    app.config.update(SSE_QUEUE_SIZE=2, SSE_SLOW_CONSUMER={"prices": "conflate"})
    sse = SSE(app)
    with app.app_context():
        with sse.subscribe(["prices"], last_id=None) as lagging:
            assert lagging.policy == "conflate"
            for n in range(6):
                sse.publish({"n": n}, channel="prices", key="AB"[n % 2])
            assert [json.loads(e.data)["n"] for e in lagging.get_batch(10)] == [4, 5]
        stats = sse.stats()
        assert (stats["conflated"], stats["dropped"], stats["gaps"]) == (4, 0, 0)
        with pytest.raises(InvalidEventError, match="key"):
            sse.publish("x", channel="prices", key="")


def test_the_blueprints_helpers_are_not_public() -> None:
    public = {name for name in dir(SSE) if not name.startswith("_")}
    assert public == {
        "admin_check",
        "authorize",
        "blueprint",
        "broker",
        "config",
        "identify",
        "init_app",
        "on_close",
        "presence",
        "publish",
        "response",
        "stats",
        "stream",
        "subscribe",
    }


@pytest.mark.parametrize(("heartbeat", "retry"), [(-1, None), ("5", None), (None, -5), (None, 1.5)])
def test_bad_decorator_options_are_refused_when_decorating(
    sse: SSE, heartbeat: Any, retry: Any
) -> None:
    with pytest.raises(ConfigError):
        sse.stream(heartbeat=heartbeat, retry=retry)


# The response


def test_response_headers_and_no_length_or_encoding(app: Flask, sse: SSE) -> None:
    @app.get("/s")
    @sse.stream
    def s() -> Iterator[str]:
        yield "x"

    response = app.test_client().get("/s", buffered=False)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    for name in ("Content-Length", "Content-Encoding", "Connection", "Transfer-Encoding"):
        assert name not in response.headers
    assert body(response) == b"retry: 3000\n\ndata: x\n\n"


def test_first_chunk_is_the_preamble_even_when_the_producer_blocks(app: Flask, sse: SSE) -> None:
    @app.get("/s")
    @sse.stream(retry=2000)
    def s() -> Iterator[str]:
        gevent.sleep(600)
        yield "never"

    response = app.test_client().get("/s", buffered=False)
    with gevent.Timeout(2):
        assert chunks(response, 1) == [b"retry: 2000\n\n"]


def test_no_retry_sends_a_comment_first(app: Flask, sse: SSE) -> None:
    del app.extensions["sse"]  # registered again below, without a retry
    app.config["SSE_RETRY"] = None
    sse.init_app(app)

    @app.get("/s")
    @sse.stream
    def s() -> Iterator[str]:
        yield "x"

    assert body(app.test_client().get("/s", buffered=False)) == b":\n\ndata: x\n\n"


def test_items_of_every_kind_are_encoded(app: Flask, sse: SSE) -> None:
    @app.get("/s")
    @sse.stream(retry=None)
    def s() -> Iterator[Any]:
        yield Event("a", event="e", id=1)
        yield "b\nc"
        yield {"k": [1, 2]}
        yield [1, "two"]
        yield Comment("note")
        yield Event({"nested": True})

    assert body(app.test_client().get("/s", buffered=False)) == (
        b":\n\n"
        b"id: 1\nevent: e\ndata: a\n\n"
        b"data: b\ndata: c\n\n"
        b'data: {"k": [1, 2]}\n\n'
        b'data: [1, "two"]\n\n'
        b": note\n"
        b'data: {"nested": true}\n\n'
    )


def test_json_goes_through_the_apps_json_provider(app: Flask) -> None:
    class Provider(DefaultJSONProvider):
        def dumps(self, obj: Any, **kwargs: Any) -> str:
            return json.dumps({"wrapped": obj}, separators=(",", ":"))

    app.json = Provider(app)
    sse = SSE(app)

    @app.get("/s")
    @sse.stream(retry=None)
    def s() -> Iterator[Any]:
        yield {"a": 1}
        yield Event([2])

    assert body(app.test_client().get("/s", buffered=False)) == (
        b':\n\ndata: {"wrapped":{"a":1}}\n\ndata: {"wrapped":[2]}\n\n'
    )


def test_the_producer_sees_request_session_g_and_current_app(app: Flask, sse: SSE) -> None:
    @app.before_request
    def load_user() -> None:
        g.user = "ada"

    @app.get("/login")
    def login() -> str:
        session["n"] = 7
        return "ok"

    @app.get("/s")
    @sse.stream(retry=None)
    def s() -> Iterator[dict[str, Any]]:
        from flask import current_app

        yield {
            "q": request.args["q"],
            "user": g.user,
            "n": session["n"],
            "app": current_app.name,
        }

    client = app.test_client()
    client.get("/login")
    assert body(client.get("/s?q=hi", buffered=False)) == (
        b':\n\ndata: {"app": "test_extension", "n": 7, "q": "hi", "user": "ada"}\n\n'
    )


def test_a_view_may_refuse_before_the_stream_starts(app: Flask, sse: SSE) -> None:
    @app.get("/s")
    @sse.stream
    def s() -> Iterator[str]:
        if request.args.get("token") != "ok":
            abort(403)
        return iter(["allowed"])

    client = app.test_client()
    assert client.get("/s").status_code == 403
    assert body(client.get("/s?token=ok", buffered=False)).endswith(b"data: allowed\n\n")


def test_a_view_may_return_a_finished_response(app: Flask, sse: SSE) -> None:
    @app.get("/s")
    @sse.stream
    def s() -> Any:
        return app.response_class(status=204)

    assert app.test_client().get("/s").status_code == 204


def test_a_view_that_returns_no_iterable_is_a_clear_error(app: Flask, sse: SSE) -> None:
    @app.get("/s")
    @sse.stream
    def s() -> Any:
        return "not a stream"

    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(TypeError, match="must yield events"):
        app.test_client().get("/s")


def test_an_item_that_cannot_be_sent_ends_the_stream_and_is_logged(
    app: Flask, sse: SSE, caplog: pytest.LogCaptureFixture
) -> None:
    @app.get("/s")
    @sse.stream(retry=None)
    def s() -> Iterator[Any]:
        yield "fine"
        yield 42

    with caplog.at_level(logging.ERROR):
        assert body(app.test_client().get("/s", buffered=False)) == b":\n\ndata: fine\n\n"
    assert "Exception in event stream" in caplog.text
    assert "not int" in caplog.text


def test_a_raising_producer_ends_the_stream_without_a_traceback_to_the_client(
    app: Flask, sse: SSE, caplog: pytest.LogCaptureFixture
) -> None:
    @app.get("/s")
    @sse.stream(retry=None)
    def s() -> Iterator[str]:
        yield "before"
        raise RuntimeError("secret detail")

    with caplog.at_level(logging.ERROR):
        out = body(app.test_client().get("/s", buffered=False))
    assert out == b":\n\ndata: before\n\n"
    assert "secret detail" in caplog.text


def test_head_requests_never_start_the_producer(app: Flask, sse: SSE) -> None:
    started = []

    @app.get("/s")
    @sse.stream
    def s() -> Iterator[str]:
        started.append(True)
        yield "x"

    response = app.test_client().head("/s")
    assert response.status_code == 200
    assert response.data == b""
    assert started == []


def test_closing_the_response_runs_the_producers_finally_and_on_close(app: Flask, sse: SSE) -> None:
    cleaned = gevent.event.Event()
    reasons: list[CloseReason] = []
    seen_request: list[str] = []

    @sse.on_close
    def record(reason: CloseReason) -> None:
        reasons.append(reason)
        seen_request.append(request.path)

    @app.get("/s")
    @sse.stream
    def s() -> Iterator[str]:
        try:
            yield "one"
            gevent.sleep(600)
            yield "never"
        finally:
            cleaned.set()

    response = app.test_client().get("/s", buffered=False)
    with gevent.Timeout(2):
        assert chunks(response, 2) == [b"retry: 3000\n\n", b"data: one\n\n"]
        assert cleaned.wait(2)
    assert reasons == [CloseReason.WRITE_FAILED]
    assert seen_request == ["/s"]


def test_on_close_reports_a_finished_producer(app: Flask, sse: SSE) -> None:
    reasons: list[CloseReason] = []
    sse.on_close(reasons.append)

    @app.get("/s")
    @sse.stream
    def s() -> Iterator[str]:
        yield "x"

    body(app.test_client().get("/s", buffered=False))
    assert reasons == [CloseReason.FINISHED]


def test_teardown_runs_for_the_stream_when_it_ends(app: Flask, sse: SSE) -> None:
    torn_down: list[str] = []

    @app.teardown_request
    def teardown(exc: BaseException | None) -> None:
        torn_down.append(request.path)

    @app.get("/s")
    @sse.stream
    def s() -> Iterator[str]:
        yield "x"

    body(app.test_client().get("/s", buffered=False))
    # Once for the view's request, once for the stream's copy of it.
    assert torn_down == ["/s", "/s"]


def test_a_stream_iterated_inside_its_request_context_gets_a_copy_of_it(
    app: Flask, sse: SSE
) -> None:
    @app.get("/s")
    @sse.stream(retry=None)
    def s() -> Iterator[dict[str, Any]]:
        yield {"q": request.args["q"], "user": g.user}

    with app.test_request_context("/s?q=inside"):
        g.user = "grace"
        response = app.view_functions["s"]()
        try:
            out = b"".join(response.response)
        finally:
            response.close()
        assert request.args["q"] == "inside"  # the view's own context is intact
    assert out == b':\n\ndata: {"q": "inside", "user": "grace"}\n\n'


def test_the_encoder_is_built_once_per_app_and_again_when_app_json_is_replaced(
    app: Flask, sse: SSE
) -> None:
    @app.get("/s")
    @sse.stream(retry=None)
    def s() -> Iterator[Any]:
        yield {"a": 1}

    state = app.extensions["sse"]
    first = state.item_encoder(app.json.dumps)
    assert state.item_encoder(app.json.dumps) is first
    assert body(app.test_client().get("/s", buffered=False)) == b':\n\ndata: {"a": 1}\n\n'

    class Provider(DefaultJSONProvider):
        def dumps(self, obj: Any, **kwargs: Any) -> str:
            return json.dumps({"wrapped": obj}, separators=(",", ":"))

    app.json = Provider(app)
    assert body(app.test_client().get("/s", buffered=False)) == (
        b':\n\ndata: {"wrapped":{"a":1}}\n\n'
    )
    assert state.item_encoder(app.json.dumps) is not first


# The contexts the producer runs in


@pytest.fixture
def teardowns(app: Flask) -> list[tuple[str, BaseException | None]]:
    """Each teardown that ran, request or app, with the exception it saw."""
    log: list[tuple[str, BaseException | None]] = []
    app.teardown_request(lambda exc: log.append(("request", exc)))
    app.teardown_appcontext(lambda exc: log.append(("app", exc)))
    return log


def view_contexts(app: Flask, *, path: str = "/s?q=1") -> tuple[_ViewContexts, Any, Any]:
    """The contexts of a view that set ``g.user``, and its request and ``g``."""
    with app.test_request_context(path):
        g.user = "ada"
        session["seen"] = True
        return (
            _ViewContexts(),
            request._get_current_object(),  # type: ignore[attr-defined]
            g._get_current_object(),  # type: ignore[attr-defined]
        )


def test_the_producer_sees_the_views_request_g_and_session_and_teardown_runs_again(
    app: Flask, teardowns: list[tuple[str, BaseException | None]]
) -> None:
    contexts, view_request, view_g = view_contexts(app)
    teardowns.clear()
    seen: list[Any] = []

    def produce() -> Iterator[bytes]:
        seen.append((request._get_current_object(), g._get_current_object()))  # type: ignore[attr-defined]
        seen.append((request.args["q"], g.user, session["seen"], current_app.name))
        yield b"x"

    assert contexts.run(lambda: list(produce())) == [b"x"]
    assert seen == [(view_request, view_g), ("1", "ada", True, app.name)]
    assert teardowns == []  # held until the stream ends
    contexts.end(None)
    assert teardowns == [("request", None), ("app", None)]
    assert not has_app_context()  # nothing leaks into the caller's context


def test_teardown_sees_what_ended_the_stream(
    app: Flask, teardowns: list[tuple[str, BaseException | None]]
) -> None:
    error = ValueError("the producer failed")
    for ended, seen in [(error, error), (GeneratorExit(), GeneratorExit)]:
        contexts, _, _ = view_contexts(app)
        contexts.run(lambda: request.args["q"])
        teardowns.clear()
        contexts.end(ended)
        assert [
            (kind, exc if isinstance(seen, BaseException) else type(exc)) for kind, exc in teardowns
        ] == [("request", seen), ("app", seen)]
        contexts.end(ended)  # once only
        assert len(teardowns) == 2
        assert not has_app_context()


def test_a_producer_greenlet_of_ours_sees_the_contexts_and_the_close_pops_them(
    app: Flask, teardowns: list[tuple[str, BaseException | None]]
) -> None:
    contexts, _, _ = view_contexts(app)
    teardowns.clear()
    finalized: list[bool] = []

    def produce() -> Iterator[bytes]:
        try:
            while True:
                yield request.args["q"].encode()
        finally:
            finalized.append(has_request_context())

    def run_producer() -> list[bytes]:
        frames = produce()
        try:
            return [next(frames), next(frames)]
        finally:
            frames.close()

    assert gevent.spawn(contexts.run, run_producer).get(timeout=2) == [b"1", b"1"]
    assert finalized == [True]
    assert teardowns == []
    contexts.end(GeneratorExit())
    # Closed before its end, as flask.stream_with_context tells teardown.
    assert [(kind, type(exc)) for kind, exc in teardowns] == [
        ("request", GeneratorExit),
        ("app", GeneratorExit),
    ]
    assert not has_app_context()


def test_an_app_context_stream_without_a_request_sees_the_apps_g(app: Flask) -> None:
    with app.app_context():
        g.job = 7
        contexts = _ViewContexts()

    def produce() -> Iterator[bytes]:
        yield str(g.job).encode()
        assert not has_request_context()

    assert contexts.run(lambda: list(produce())) == [b"7"]
    contexts.end(None)
    assert not has_app_context()


def test_close_brokers_closes_every_broker_made_for_an_app() -> None:
    """Issue 11, item 10: our runner and worker call it when they stop."""
    from flask_sse_stream._extension import close_brokers

    apps = [Flask(f"app{n}") for n in range(2)]
    brokers = []
    for app in apps:
        extension = SSE(app)
        with app.app_context():
            brokers.append(extension.broker)
    assert close_brokers() >= 2
    assert all(broker.closed for broker in brokers)  # type: ignore[attr-defined]
    assert close_brokers() == 0
