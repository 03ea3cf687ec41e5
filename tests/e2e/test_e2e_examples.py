"""The Datastar example over real sockets: datastar-py's events out, the page's signals in.

Its page needs the Datastar 1.0 client, which no registry package ships (see
``examples/datastar_counter.py``), so no browser drives it; this test sends
what Datastar sends (the ``Datastar-Request`` header, the signals as a JSON
body) and reads the events as Datastar would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser.servers import gunicorn_command, runner_command, start

from .helpers import RawClient, Server, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

APP = "examples.datastar_counter:app"


@pytest.fixture(scope="module", params=["runner", "worker"])
def counter(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    port = free_port()
    command = (
        runner_command(APP, port)
        if request.param == "runner"
        else gunicorn_command(APP, port, "flask_sse_stream.gunicorn.GeventWorker")
    )
    log_dir: Path = tmp_path_factory.mktemp("datastar")
    server = start(request.param, command, port, log_dir, ready_path="/")
    yield server
    server.stop()


def test_a_press_streams_signals_back_and_publishes_elements_to_every_page(
    counter: Server,
) -> None:
    with RawClient(counter.port) as page, RawClient(counter.port) as press:
        page.request("/events?channel=datastar", headers=[("Datastar-Request", "true")])
        assert page.response().status_code == 200
        assert page.chunk() is not None  # the stream is open (its retry field)

        press.request(
            "/increment",
            method="POST",
            json_body={"mine": 4, "name": "<ann>", "total": 0},
            headers=[("Datastar-Request", "true")],
        )
        assert press.response().status_code == 200
        press.chunks_until_end()
        (signals,) = press.events
        assert signals.event == "datastar-patch-signals"
        assert json.loads(signals.data.removeprefix("signals ")) == {"mine": 5}

        while len(page.events) < 2:
            assert page.chunk() is not None
        elements, total = page.events
        assert elements.event == "datastar-patch-elements"
        lines = elements.data.split("\n")
        assert lines[:2] == ["mode prepend", "selector #presses"]
        assert lines[2].startswith('elements <li data-testid="press">&lt;ann&gt; pressed: ')
        assert total.event == "datastar-patch-signals"
        assert "total" in json.loads(total.data.removeprefix("signals "))
        # Channel events carry ids, so a reconnecting page replays what it missed.
        assert elements.id != total.id != ""
