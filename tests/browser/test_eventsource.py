"""A real ``EventSource`` in headless Chromium against our runner and gunicorn.

The page (``page.html``, served by the test app) opens one ``EventSource``
and records every event it dispatches, so these tests see exactly what a
browser's script sees: which listener got an event, its data, its
``lastEventId``, how often the source opened, and its ``readyState``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from e2e.helpers import HOST, RawClient, Server, wait_for
from redis_server import RedisServer

from .servers import APP, live, start_gunicorn, start_runner

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(30)]

RETRY_MS = 300
"""``SSE_RETRY`` of the test app."""


def post(server: Server, path: str, body: dict[str, Any]) -> dict[str, Any]:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"Content-Type": "application/json", "Connection": "close"},
        )
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200, data
        return json.loads(data)  # type: ignore[no-any-return]
    finally:
        conn.close()


def open_source(
    page: Any, server: Server, src: str, listen: tuple[str, ...] = (), credentials: bool = False
) -> None:
    """Load the test page, which opens an ``EventSource`` on ``src``; wait until it is open."""
    query = f"src={quote(src, safe='')}&listen={','.join(listen)}"
    if credentials:
        query += "&credentials"
    page.goto(f"http://{HOST}:{server.port}/page?{query}")
    page.wait_for_function("window.opens >= 1")


def received(page: Any) -> list[dict[str, str]]:
    return page.evaluate("window.received")  # type: ignore[no-any-return]


def stream_requests(server: Server, path: str, query: str) -> list[dict[str, Any]]:
    """The stream requests the server got for ``path?query``, in order."""
    return [r for r in server.state()["requests"] if r["path"] == path and r["query"] == query]


def channel_name() -> str:
    return f"c{uuid.uuid4().hex[:12]}"


def test_events_render_and_named_events_reach_their_own_listener(page: Any, runner: Server) -> None:
    channel = channel_name()
    open_source(page, runner, f"/events?channel={channel}", listen=("tick",))
    for data, event in [("plain", None), ("t1", "tick"), ("unheard", "tock"), ("last", None)]:
        post(runner, "/publish", {"channel": channel, "data": data, "event": event})
    page.wait_for_function("window.received.some((e) => e.data === 'last')")

    got = [(e["type"], e["data"]) for e in received(page)]
    # "tock" has no listener: it must not fall back to onmessage.
    assert got == [("message", "plain"), ("tick", "t1"), ("message", "last")]
    log = page.get_by_test_id("log").locator("li")
    assert log.all_text_contents() == ["plain", "t1", "last"]
    assert [log.nth(i).get_attribute("data-type") for i in range(3)] == [
        "message",
        "tick",
        "message",
    ]
    ids = [e["id"] for e in received(page)]
    assert len(set(ids)) == 3
    assert all(ids)


# What the browser must dispatch for each published text: one message event,
# its line ends normalised to LF by the event-stream parser, nothing else.
INJECTIONS = {
    "hello\r\n\r\nevent: admin\r\ndata: pwned": "hello\n\nevent: admin\ndata: pwned",
    "one\rtwo": "one\ntwo",
    "line\u2028separator": "line\u2028separator",
}


def test_injection_payloads_arrive_as_one_message_each(page: Any, runner: Server) -> None:
    channel = channel_name()
    open_source(page, runner, f"/events?channel={channel}", listen=("admin",))
    for data in [*INJECTIONS, "end"]:
        post(runner, "/publish", {"channel": channel, "data": data})
    page.wait_for_function("window.received.some((e) => e.data === 'end')")

    got = [(e["type"], e["data"]) for e in received(page)]
    assert got == [("message", text) for text in [*INJECTIONS.values(), "end"]]
    assert page.get_by_test_id("log").locator("li").count() == 4


def test_after_a_cut_the_browser_waits_the_retry_sent_and_resumes_from_its_last_id(
    page: Any, runner: Server
) -> None:
    channel = channel_name()
    query = f"channel={channel}"
    open_source(page, runner, f"/events?{query}")
    ids = post(runner, "/publish", {"channel": channel, "start": 1, "count": 3})["ids"]
    page.wait_for_function("window.received.length >= 3")

    # The server ends the stream with a last `retry: 1500` (the stream
    # opened with 300) and publishes 4..6 while the browser is away.
    retry = 1500
    cut = post(runner, "/debug/cut", {"retry": retry, "channel": channel, "start": 4, "count": 3})
    assert cut["streams"] >= 1
    page.wait_for_function("window.opens >= 2 && window.received.length >= 6")
    post(runner, "/publish", {"channel": channel, "start": 7, "count": 2})
    page.wait_for_function("window.received.length >= 8")

    assert [e["data"] for e in received(page)] == [str(n) for n in range(1, 9)]
    assert [e["type"] for e in received(page)] == ["message"] * 8
    assert page.evaluate("window.opens") == 2
    first, again = stream_requests(runner, "/events", query)
    assert first["last_event_id"] is None
    assert again["last_event_id"] == ids[-1]
    waited = again["at"] - cut["at"]
    # Chromium honours the latest retry: field; the upper bound is generous.
    assert retry / 1000 - 0.05 <= waited < retry / 1000 + 2, waited
    assert page.get_by_test_id("log").locator("li").count() == 8


def test_a_cross_origin_stream_with_credentials_resumes_with_last_event_id_without_preflight(
    page: Any, runner: Server
) -> None:
    """The page is on 127.0.0.1, the stream on localhost; the app allows the page's origin."""
    channel = channel_name()
    query = f"channel={channel}"
    open_source(page, runner, f"http://localhost:{runner.port}/events?{query}", credentials=True)
    ids = post(runner, "/publish", {"channel": channel, "start": 1, "count": 2})["ids"]
    page.wait_for_function("window.received.length >= 2")
    post(runner, "/debug/cut", {"retry": RETRY_MS, "channel": channel, "start": 3, "count": 2})
    page.wait_for_function("window.opens >= 2 && window.received.length >= 4")

    assert [e["data"] for e in received(page)] == ["1", "2", "3", "4"]
    seen = [r for r in runner.state()["requests"] if r["query"] == query]
    # Chromium sends Last-Event-ID on the reconnect without a CORS preflight.
    assert [r["method"] for r in seen] == ["GET", "GET"]
    assert {r["origin"] for r in seen} == {f"http://{HOST}:{runner.port}"}
    assert seen[1]["last_event_id"] == ids[-1]


def test_six_streams_per_host_over_http_1_1_and_one_stream_carries_many_channels(
    page: Any, runner: Server
) -> None:
    """Chromium opens at most six HTTP/1.1 connections per host; a seventh
    EventSource waits for one of them. One EventSource subscribed to seven
    channels needs one connection."""
    channels = [channel_name() for _ in range(7)]
    query = "&".join(f"channel={c}" for c in channels)
    open_source(page, runner, f"/events?{query}")
    token = uuid.uuid4().hex
    # Six more streams: with the one above, seven to the same host.
    page.evaluate(
        """(token) => { window.extra = [0, 1, 2, 3, 4, 5].map(
            (i) => new EventSource(`/blocked?token=${token}-${i}`)); }""",
        token,
    )
    page.wait_for_function(
        "window.extra.filter((s) => s.readyState === EventSource.OPEN).length === 5"
    )

    def started() -> list[str]:
        return [t for t in runner.state()["started"] if t.startswith(token)]

    wait_for(lambda: len(started()) >= 5, timeout=5)
    waiting = page.evaluate(
        "window.extra.map((s, i) => [i, s.readyState]).filter(([, r]) => r !== 1)"
    )
    assert len(started()) == 5
    assert len(waiting) == 1
    assert waiting[0][1] == 0  # CONNECTING

    for n, channel in enumerate(channels):
        post(runner, "/publish", {"channel": channel, "data": str(n)})
    page.wait_for_function("window.received.length >= 7")
    assert sorted(e["data"] for e in received(page)) == [str(n) for n in range(7)]

    # Close one of the open streams: the waiting one gets its connection.
    last = waiting[0][0]
    page.evaluate(f"window.extra[{(last + 1) % 6}].close()")
    page.wait_for_function(f"window.extra[{last}].readyState === EventSource.OPEN")
    wait_for(lambda: len(started()) == 6, timeout=5)


def test_the_reset_signal_for_an_evicted_id_reaches_the_page(page: Any, runner: Server) -> None:
    channel = channel_name()
    query = f"channel={channel}"
    open_source(page, runner, f"/events?{query}", listen=("sse-reset",))
    ids = post(runner, "/publish", {"channel": channel, "start": 1, "count": 2})["ids"]
    page.wait_for_function("window.received.length >= 2")

    # 25 events while the browser is away: more than SSE_HISTORY_SIZE (20),
    # so the page's last id falls out of the history.
    post(runner, "/debug/cut", {"retry": RETRY_MS, "channel": channel, "start": 3, "count": 25})
    page.wait_for_function("window.received.some((e) => e.type === 'sse-reset')")
    post(runner, "/publish", {"channel": channel, "data": "after"})
    page.wait_for_function("window.received.some((e) => e.data === 'after')")

    got = received(page)
    assert [(e["type"], e["data"]) for e in got] == [
        ("message", "1"),
        ("message", "2"),
        ("sse-reset", ""),
        ("message", "after"),
    ]
    reset_id = got[2]["id"]
    assert reset_id
    assert reset_id not in ids
    assert stream_requests(runner, "/events", query)[-1]["last_event_id"] == ids[-1]


def test_a_stream_ended_for_good_with_204_stops_the_browser_reconnecting(
    page: Any, runner: Server
) -> None:
    token = uuid.uuid4().hex
    open_source(page, runner, f"/finite?token={token}")
    page.wait_for_function("window.source.readyState === EventSource.CLOSED")

    assert [(e["data"], e["id"]) for e in received(page)] == [("1", "f1"), ("2", "f2"), ("3", "f3")]
    assert page.get_by_test_id("state").text_content() == "closed"
    first, again = stream_requests(runner, "/finite", f"token={token}")
    assert first["last_event_id"] is None
    assert again["last_event_id"] == "f3"
    assert again["at"] - first["at"] >= RETRY_MS / 1000 - 0.05


def test_eventsource_close_makes_the_producer_clean_up_at_once(page: Any, runner: Server) -> None:
    token = uuid.uuid4().hex
    open_source(page, runner, f"/blocked?token={token}")
    page.wait_for_function("window.received.length >= 1")
    state = runner.state()
    assert token in state["started"]
    assert token not in state["finalized"]

    page.evaluate("window.source.close()")
    closed_at = time.monotonic()
    finalized = wait_for(
        lambda: runner.state()["finalized"].get(token),
        timeout=5,
        interval=0.02,
        message="the producer's finally did not run after EventSource.close()",
    )
    assert finalized - closed_at < 1.0
    assert runner.state()["closed"][token] == "disconnect"


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal"
    path.write_text("")
    return path


@pytest.fixture
def gunicorn(tmp_path: Path, journal: Path) -> Iterator[Server]:
    with live(start_gunicorn(APP, tmp_path, env={"BROWSER_TEST_JOURNAL": str(journal)})) as server:
        yield server


def append(journal: Path, *lines: str) -> None:
    with journal.open("a") as file:
        file.write("".join(f"{line}\n" for line in lines))


# The server fixture comes before ``page``, so the page closes first: the
# server then stops without a browser reconnecting to it.


def test_after_a_worker_is_killed_the_browser_resumes_on_the_next_one_without_loss(
    gunicorn: Server, journal: Path, page: Any
) -> None:
    append(journal, "1", "2", "3")
    open_source(page, gunicorn, "/journal")
    page.wait_for_function("window.received.length >= 3")
    worker = gunicorn.state()["pid"]

    os.kill(worker, signal.SIGKILL)
    append(journal, "4", "5", "6")  # published while no worker serves
    page.wait_for_function("window.opens >= 2 && window.received.length >= 6")
    append(journal, "7")
    page.wait_for_function("window.received.length >= 7")

    got = received(page)
    assert [e["data"] for e in got] == [str(n) for n in range(1, 8)]
    assert [e["id"] for e in got] == [str(n) for n in range(1, 8)]
    state = gunicorn.state()
    assert state["pid"] != worker
    # The new worker saw only the reconnect, with the last id the page had.
    assert [r["last_event_id"] for r in state["requests"] if r["path"] == "/journal"] == ["3"]
    assert page.evaluate("window.opens") == 2


def test_after_a_hup_reload_the_browser_moves_to_a_new_worker_at_once(
    gunicorn: Server, page: Any
) -> None:
    token = uuid.uuid4().hex
    open_source(page, gunicorn, f"/blocked?token={token}")
    page.wait_for_function("window.received.length >= 1")
    old = gunicorn.state()["pid"]

    gunicorn.signal(signal.SIGHUP)
    # Drained with a retry of 1 to 2 s, the page reconnects; well before
    # graceful_timeout (10 s) a new worker must be serving it.
    page.wait_for_function(
        f"window.received.some((e) => e.data.startsWith('hello') && e.data !== 'hello from {old}')",
        timeout=7000,
    )


def test_a_page_told_to_come_back_later_reconnects_once_a_slot_frees_and_misses_nothing(
    page: Any, runner: Server
) -> None:
    """Issue 11, item 3: past SSE_MAX_CONNECTIONS the answer keeps the EventSource alive.

    Before, the 503 failed the EventSource for good (readyState CLOSED, no
    reconnect). The page here was drained, came back while the only slot
    was taken, was told to come back later (a 200 stream with a jittered
    ``retry:`` and an ``sse-unavailable`` event, no id), and resumed with
    its Last-Event-ID once the slot freed.
    """
    channel = channel_name()
    open_source(page, runner, f"/limited/events?channel={channel}", listen=("sse-unavailable",))
    post(runner, "/limited/publish", {"channel": channel, "data": "1"})
    page.wait_for_function("window.received.length >= 1")

    # Drain the page's stream (it comes back after 1 s) and take the only slot.
    assert post(runner, "/debug/cut", {"retry": 1000, "channel": channel})["streams"] == 1
    wait_for(lambda: runner.state()["open_streams"] == 0, 5)
    holder = RawClient(runner.port)
    try:
        holder.request("/limited/events?channel=elsewhere")
        assert holder.response().status_code == 200
        assert holder.chunk() == b"retry: 300\n\n"
        # The page meets the limit at least twice, and keeps trying.
        page.wait_for_function(
            "window.received.filter((e) => e.type === 'sse-unavailable').length >= 2"
        )
        assert page.evaluate("window.source.readyState") != 2  # not CLOSED
        for data in ("2", "3"):
            post(runner, "/limited/publish", {"channel": channel, "data": data})
    finally:
        holder.close()
    page.wait_for_function("window.received.filter((e) => e.type === 'message').length >= 3")

    messages = [e for e in received(page) if e["type"] == "message"]
    assert [e["data"] for e in messages] == ["1", "2", "3"]
    refusals = [e for e in received(page) if e["type"] == "sse-unavailable"]
    assert all(json.loads(e["data"])["reason"] == "full" for e in refusals)
    assert all(300 <= json.loads(e["data"])["retry"] < 600 for e in refusals)
    assert page.evaluate("window.source.readyState") == 1  # OPEN


@pytest.fixture
def redis_runner(redis_server: RedisServer, tmp_path: Path) -> Iterator[Server]:
    """The test app under our runner, its broker on ``redis_server``."""
    with live(
        start_runner(APP, tmp_path, env={"BROWSER_TEST_BROKER_URL": redis_server.url})
    ) as server:
        yield server


@pytest.mark.redis_server
@pytest.mark.timeout(90)
def test_a_page_told_to_come_back_while_redis_is_down_resumes_once_it_returns(
    redis_server: RedisServer, redis_runner: Server, page: Any
) -> None:
    """Issue 11, item 3: Redis unreachable; the page keeps trying and misses nothing.

    The page's stream ends (a drain) and an event is published that it has
    not seen; Redis goes down (shut down, its keys saved); the page comes
    back, is told to come back later (``sse-unavailable``, reason
    ``unavailable``) and keeps trying; Redis returns with its keys, and the
    page resumes from its Last-Event-ID: the event it missed, then the next.
    """
    channel = channel_name()
    open_source(page, redis_runner, f"/events?channel={channel}", listen=("sse-unavailable",))
    post(redis_runner, "/publish", {"channel": channel, "data": "1"})
    page.wait_for_function("window.received.length >= 1")

    # The page comes back in 2 s; "2" is published meanwhile, then Redis goes.
    cut = post(
        redis_runner, "/debug/cut", {"retry": 2000, "channel": channel, "start": 2, "count": 1}
    )
    assert cut["streams"] == 1
    redis_server.stop(save=True)
    page.wait_for_function(
        "window.received.filter((e) => e.type === 'sse-unavailable').length >= 2", timeout=30_000
    )
    assert page.evaluate("window.source.readyState") != 2  # not CLOSED

    redis_server.start()
    page.wait_for_function(
        "window.received.filter((e) => e.type === 'message').length >= 2", timeout=30_000
    )
    post(redis_runner, "/publish", {"channel": channel, "data": "3"})
    page.wait_for_function("window.received.filter((e) => e.type === 'message').length >= 3")

    messages = [e for e in received(page) if e["type"] == "message"]
    assert [e["data"] for e in messages] == ["1", "2", "3"]
    assert messages[1]["id"] == cut["ids"][0]  # from Redis's history, as published
    refusals = [e for e in received(page) if e["type"] == "sse-unavailable"]
    assert all(json.loads(e["data"])["reason"] == "unavailable" for e in refusals)
    assert page.evaluate("window.source.readyState") == 1  # OPEN
    # Each time, the page came back with the id of "1", the last it had.
    comebacks = stream_requests(redis_runner, "/events", f"channel={channel}")[1:]
    assert len(comebacks) >= 3
    assert {r["last_event_id"] for r in comebacks} == {messages[0]["id"]}
