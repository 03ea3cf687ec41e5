"""Fixtures that start the test app under real servers.

``server`` is parametrised over our runner, our gunicorn worker
(``flask_sse_stream.gunicorn.GeventWorker``) and gunicorn's own two gevent
workers; ``any_server`` adds the werkzeug development server where the
issue asks for it too. Each kind starts once per session (a pool keeps it)
and every test that used a server waits, afterwards, until the server has
no stream open, so no test leaks a stream into the next one. When a test
fails its report carries the server's log.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .helpers import Server, start_server

GEVENT_SERVERS = ["runner", "worker", "gevent", "gevent_pywsgi"]
ALL_SERVERS = [*GEVENT_SERVERS, "werkzeug"]


class ServerPool:
    """Servers started on first use, stopped at the end of the session."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: dict[str, Server] = {}

    def get(self, kind: str) -> Server:
        server = self.servers.get(kind)
        if server is None or server.process.poll() is not None:
            server = self.servers[kind] = start_server(kind, self.log_dir)
        return server

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()


@pytest.fixture(scope="session")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    yield pool
    pool.stop()


def _settle(server: Server) -> None:
    if server.process.poll() is None:
        server.settled()


@pytest.fixture(params=GEVENT_SERVERS)
def server(request: pytest.FixtureRequest, server_pool: ServerPool) -> Iterator[Server]:
    """The test app under our runner, our worker, ``-k gevent`` and ``-k gevent_pywsgi``."""
    server = server_pool.get(request.param)
    yield server
    _settle(server)


@pytest.fixture(params=ALL_SERVERS)
def any_server(request: pytest.FixtureRequest, server_pool: ServerPool) -> Iterator[Server]:
    """As ``server``, plus the werkzeug development server (threaded, not patched)."""
    server = server_pool.get(request.param)
    yield server
    _settle(server)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for value in funcargs.values():
            if isinstance(value, Server):
                report.sections.append((f"{value.kind} server log", value.log()[-20_000:]))
    return report
