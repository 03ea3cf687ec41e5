"""The demo chat (``examples/demo.py``, what ``make run`` serves) in headless Chromium.

Two windows chat through the page's own form; hostile text renders as one
message; a server restart shows the page reconnecting and the reset notice;
with ``SSE_BROKER_URL`` the same demo runs under gunicorn on Redis and a
page keeps every message across a worker's death.
``DEMO_SCREENSHOT=docs/demo.png pytest tests/browser`` saves the screenshot
the README and the docs show.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.helpers import HOST, Server, wait_for
from redis_server import RedisServer

from .servers import start_gunicorn, start_runner

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(30)]

DEMO = "examples.demo:app"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_runner(DEMO, tmp_path_factory.mktemp("demo"), ready_path="/")
    yield server
    server.stop()


def open_demo(page: Any, server: Server) -> None:
    page.goto(f"http://{HOST}:{server.port}/")
    page.wait_for_function("document.querySelector('[data-testid=state]').dataset.state === 'open'")


def send(page: Any, name: str, text: str) -> None:
    """Type into the page's form and press Send, as a person would."""
    page.get_by_test_id("name").fill(name)
    page.get_by_test_id("text").fill(text)
    page.get_by_test_id("send").click()


def wait_count(page: Any, count: int) -> None:
    page.wait_for_function(
        f"document.querySelector('[data-testid=count]').textContent === '{count}'"
    )


def messages(page: Any) -> list[str]:
    return page.get_by_test_id("message-text").all_text_contents()  # type: ignore[no-any-return]


CHAT = [
    ("alice", "Hi Bob! Is the stream live?"),
    ("bob", "Live: this came over one EventSource."),
    ("alice", "And every message arrives once, in order."),
]


def test_two_windows_chat_and_each_shows_every_message_once(
    browser: Any, page: Any, demo: Server, tmp_path: Path
) -> None:
    other = browser.new_context(viewport={"width": 900, "height": 640})
    try:
        bob = other.new_page()
        alice = page
        open_demo(alice, demo)
        open_demo(bob, demo)
        for n, (name, text) in enumerate(CHAT, start=1):
            send(alice if name == "alice" else bob, name, text)
            wait_count(alice, n)
            wait_count(bob, n)

        for window in (alice, bob):
            assert messages(window) == [text for _, text in CHAT]
            assert window.locator("[data-testid=message] .who").all_text_contents() == [
                name for name, _ in CHAT
            ]
            ids = window.locator("[data-testid=message] .id").all_text_contents()
            assert len(set(ids)) == 3
            assert window.get_by_test_id("last-id").text_content() == ids[-1]
            assert window.get_by_test_id("reconnects").text_content() == "0"
            assert window.get_by_test_id("state").text_content() == "open"
        # The form cleared the text it sent, and kept the name.
        assert alice.get_by_test_id("text").input_value() == ""
        assert alice.get_by_test_id("name").input_value() == "alice"

        shot = tmp_path / "demo.png"
        alice.set_viewport_size({"width": 900, "height": 400})
        alice.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        target = os.environ.get("DEMO_SCREENSHOT")
        if target:
            shutil.copyfile(shot, target)
    finally:
        other.close()


# The demo publishes JSON, so line breaks travel escaped inside one data
# line, and the page shows the text exactly as it was sent.
HOSTILE = [
    "hello\r\n\r\nevent: admin\r\ndata: pwned",
    "one\rtwo",
    "line\u2028separator",
    "<img src=x onerror=alert(1)>",
]


def test_hostile_text_renders_as_one_message_each_and_never_as_html(
    page: Any, demo: Server
) -> None:
    open_demo(page, demo)
    for text in HOSTILE:
        status = page.evaluate(
            """async (text) => (await fetch("/messages", {
                method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({name: "mallory", text}),
            })).status""",
            text,
        )
        assert status == 201
    wait_count(page, len(HOSTILE))

    assert messages(page) == HOSTILE
    assert page.get_by_test_id("message").count() == len(HOSTILE)
    assert page.locator("#log img").count() == 0


def test_a_server_restart_shows_reconnecting_then_open_and_the_reset_notice(
    page: Any, tmp_path: Path
) -> None:
    server = start_runner(DEMO, tmp_path, ready_path="/")
    try:
        open_demo(page, server)
        send(page, "alice", "before the restart")
        wait_count(page, 1)
        old_id = page.get_by_test_id("last-id").text_content()

        server.stop()  # drains: each stream gets a last retry of 1 to 2 s
        page.wait_for_function(
            "document.querySelector('[data-testid=state]').dataset.state === 'reconnecting'"
        )
        server = start_runner(DEMO, tmp_path, port=server.port, ready_path="/")
        page.wait_for_function(
            "document.querySelector('[data-testid=reconnects]').textContent === '1'"
        )
        # The new process has a new broker: the page's last id is unknown to
        # it, so the page is told it may have missed messages.
        page.get_by_test_id("notice").wait_for()
        assert page.get_by_test_id("state").text_content() == "open"
        assert page.get_by_test_id("last-id").text_content() not in (old_id, "none")

        send(page, "alice", "after the restart")
        wait_count(page, 2)
        assert messages(page) == ["before the restart", "after the restart"]
    finally:
        page.goto("about:blank")
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def worker_pids(server: Server) -> list[int]:
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", server.log())]


def test_on_redis_under_gunicorn_a_page_misses_nothing_when_its_worker_dies(
    page: Any, redis_url: str, tmp_path: Path
) -> None:
    server = start_gunicorn(DEMO, tmp_path, env={"SSE_BROKER_URL": redis_url}, ready_path="/")
    try:
        open_demo(page, server)
        send(page, "alice", "before")
        wait_count(page, 1)
        (worker,) = worker_pids(server)

        os.kill(worker, signal.SIGKILL)
        # Sent while the page is away; the next worker takes it from Redis.
        status = page.evaluate(
            """async () => (await fetch("/messages", {
                method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({name: "bob", text: "while you were away"}),
            })).status"""
        )
        assert status == 201
        wait_for(lambda: len(worker_pids(server)) == 2, timeout=10)
        page.wait_for_function(
            "document.querySelector('[data-testid=reconnects]').textContent === '1'"
        )
        wait_count(page, 2)
        send(page, "alice", "after")
        wait_count(page, 3)

        assert messages(page) == ["before", "while you were away", "after"]
        assert page.get_by_test_id("notice").count() == 0  # replayed, not reset
        assert page.get_by_test_id("state").text_content() == "open"
    finally:
        page.goto("about:blank")  # closes the stream: the server stops without draining it
        server.stop()
