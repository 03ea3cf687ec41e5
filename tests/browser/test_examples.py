"""The htmx and token-streaming examples in headless Chromium, as a person uses them.

* ``examples/htmx_dashboard.py``: htmx's sse extension swaps fragments as
  they arrive (published from a greenlet outside any request, from a view,
  and rendered in a stream's own generator); a multi-line note arrives
  intact in every window.
* ``examples/llm_tokens.py``: a POST read with fetch renders tokens as they
  arrive and ends at ``[DONE]``; Stop aborts the fetch and the model's
  ``finally`` runs within a second, on our runner and under gunicorn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e.helpers import HOST, Server, free_port

from .servers import gunicorn_command, start, start_runner

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(40)]


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_runner(
        "examples.htmx_dashboard:app", tmp_path_factory.mktemp("htmx"), ready_path="/"
    )
    yield server
    server.stop()


def tick(page: Any) -> int:
    return int(page.get_by_test_id("tick").get_attribute("data-tick"))


def test_htmx_swaps_the_fragments_published_outside_any_request(
    page: Any, dashboard: Server
) -> None:
    page.goto(f"http://{HOST}:{dashboard.port}/")
    page.wait_for_function("document.querySelector('[data-testid=tick]') !== null")
    first = tick(page)
    page.wait_for_function(
        f"Number(document.querySelector('[data-testid=tick]').dataset.tick) > {first}"
    )
    assert tick(page) > first
    # One fragment swapped in place, not appended.
    assert page.get_by_test_id("tick").count() == 1
    assert page.get_by_test_id("stats").inner_text().startswith(f"Tick {tick(page)}")


def test_htmx_swaps_the_fragments_a_stream_renders_itself(page: Any, dashboard: Server) -> None:
    page.goto(f"http://{HOST}:{dashboard.port}/")
    page.wait_for_function(
        "Number(document.querySelector('[data-testid=clock-time]')?.dataset.n) >= 1"
    )
    assert page.get_by_test_id("clock-time").count() == 1


NOTE = "first line\n\n  indented: data: not a field\nevent: not-an-event\r\n<b>not bold</b>"


def test_a_multi_line_note_arrives_intact_in_every_window(
    browser: Any, page: Any, dashboard: Server
) -> None:
    other = browser.new_context()
    try:
        watcher = other.new_page()
        for window in (page, watcher):
            window.goto(f"http://{HOST}:{dashboard.port}/")
            # The dashboard stream is open once the first tick is swapped in.
            window.get_by_test_id("tick").wait_for()
        page.get_by_test_id("note-text").fill(NOTE)
        page.get_by_test_id("post").click()
        expected = NOTE.replace("\r\n", "\n")
        for window in (page, watcher):
            window.get_by_test_id("note").wait_for()
            assert window.get_by_test_id("note").count() == 1
            assert window.get_by_test_id("note-body").text_content() == expected
            assert window.locator("#notes b").count() == 0
        page.wait_for_function("document.querySelector('[data-testid=note-text]').value === ''")
    finally:
        other.close()


LLM = "examples.llm_tokens:app"


@pytest.fixture(scope="module", params=["runner", "gunicorn-worker", "gunicorn-gevent"])
def llm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("llm")
    if request.param == "runner":
        server = start_runner(LLM, log_dir, ready_path="/")
    else:
        port = free_port()
        worker = (
            "flask_sse_stream.gunicorn.GeventWorker"
            if request.param.endswith("worker")
            else "gevent"
        )
        server = start(
            request.param, gunicorn_command(LLM, port, worker), port, log_dir, ready_path="/"
        )
    yield server
    server.stop()


def state(page: Any) -> str:
    return page.get_by_test_id("state").text_content()  # type: ignore[no-any-return]


def test_the_token_stream_renders_tokens_as_they_arrive_and_ends_at_done(
    page: Any, llm: Server
) -> None:
    page.goto(f"http://{HOST}:{llm.port}/?delay=0.03")
    page.get_by_test_id("prompt").fill("hi")
    page.get_by_test_id("send").click()
    # Tokens show while the stream is still open...
    page.wait_for_function(
        "Number(document.querySelector('[data-testid=tokens]').textContent) >= 3"
    )
    # (about 80 tokens 30 ms apart: the rest takes two seconds)
    assert state(page) == "streaming"
    # ...and the end is the [DONE] event, not the connection closing.
    page.wait_for_function("document.querySelector('[data-testid=state]').textContent === 'done'")
    answer = page.get_by_test_id("answer").text_content()
    assert answer.startswith("You asked: 'hi'. Here is a long answer")
    assert int(page.get_by_test_id("tokens").text_content()) == len(answer.split())


def test_stop_aborts_the_fetch_and_the_model_call_ends_within_a_second(
    page: Any, llm: Server
) -> None:
    page.goto(f"http://{HOST}:{llm.port}/?delay=0.1")
    page.get_by_test_id("send").click()
    page.wait_for_function(
        "Number(document.querySelector('[data-testid=tokens]').textContent) >= 3"
    )
    page.get_by_test_id("stop").click()
    stopped_at = time.monotonic()
    page.wait_for_function("document.querySelector('[data-testid=run]').dataset.state")
    assert state(page) == "stopped"
    assert page.get_by_test_id("run").get_attribute("data-state") == "cancelled"
    # The model's finally, as the server recorded it (a clock every process shares).
    run_id = page.get_by_test_id("run").get_attribute("data-id")
    status, body = llm.get(f"/runs/{run_id}")
    assert status == 200
    run = json.loads(body)
    assert run["state"] == "cancelled"
    assert run["ended"] - stopped_at < 1
    shown = int(page.get_by_test_id("tokens").text_content())
    assert shown <= run["tokens"] <= shown + 2  # the model stopped where the page did
