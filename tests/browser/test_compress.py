"""Chromium reads a compressed stream event by event.

The page's ``EventSource`` gets the stream gzip- and br-compressed straight
from the runner (Chromium offers br to secure contexts: HTTPS, and
127.0.0.1), and br-compressed over HTTPS and HTTP/2 through nginx. Every
event is dispatched, decoded, before the server made the next one (each
carries the wall-clock time it was made; the page notes when it dispatched
it, on the same machine's clock).
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
from e2e.helpers import HOST, Server, wait_for
from proxy.nginx import Nginx

from .test_http2 import https_nginx  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(30)]

N = 4
# Before the page's own script: every EventSource it makes notes when each
# message was dispatched, from the first one on.
RECORD = """
window.arrivals = [];
window.EventSource = class extends window.EventSource {
    constructor(...args) {
        super(...args);
        this.addEventListener("message", (e) => {
            const data = JSON.parse(e.data);
            window.arrivals.push({i: data.i, made: data.made, at: Date.now()});
        });
    }
};
"""


def read_in_chromium(
    page: Any, origin: str, token: str, view: str = "/compressed"
) -> list[dict[str, float]]:
    page.add_init_script(RECORD)
    page.goto(f"{origin}/page?src={view}%3Fn%3D{N}%26gap%3D0.4%26token%3D{token}")
    page.wait_for_function(f"window.arrivals.length >= {N}")
    arrivals: list[dict[str, float]] = page.evaluate("window.arrivals")
    return arrivals


def check(arrivals: list[dict[str, float]]) -> None:
    assert [a["i"] for a in arrivals] == list(range(N))
    for this, following in itertools.pairwise(arrivals):
        assert this["at"] < following["made"], "an event was dispatched only after the next"


@pytest.mark.parametrize(("view", "offered"), [("/compressed-gzip", "gzip"), ("/compressed", "br")])
def test_chromium_reads_a_compressed_stream_event_by_event(
    page: Any, runner: Server, view: str, offered: str
) -> None:
    token = uuid.uuid4().hex
    check(read_in_chromium(page, f"http://{HOST}:{runner.port}", token, view))
    assert offered in runner.state()["encodings"][token]


def test_chromium_reads_a_br_stream_over_https_event_by_event(
    browser: Any,
    runner: Server,
    https_nginx: Nginx,  # noqa: F811
) -> None:
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        token = uuid.uuid4().hex
        check(read_in_chromium(page, f"https://{HOST}:{https_nginx.port}", token))
        assert "br" in runner.state()["encodings"][token]
    finally:
        context.close()
    wait_for(lambda: runner.state()["open_streams"] == 0, 5)
