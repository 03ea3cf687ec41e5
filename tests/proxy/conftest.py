"""nginx and HAProxy (Debian's packages) in front of gunicorn serving the proxy test app.

The tests skip on a machine without nginx or HAProxy, except in CI (the
``CI`` environment variable is set), where a skip is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from browser.servers import start_gunicorn
from e2e.helpers import Server, free_port

from .haproxy import HAProxy, HAProxyFactory, haproxy_binary, haproxy_config, start_haproxy
from .nginx import Nginx, NginxFactory, nginx_binary, site_config, start_nginx

APP = "tests.proxy.app:app"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where proxy tests must run: {report.longrepr}"
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Server):
                report.sections.append(("gunicorn log", value.log()[-20_000:]))
            if isinstance(value, Nginx):
                report.sections.append(("nginx error.log", value.error_log()[-20_000:]))
            if isinstance(value, HAProxy):
                report.sections.append(("haproxy log", value.log()[-20_000:]))
    return report


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    binary = nginx_binary()
    if binary is None:
        reason = "no nginx (apt-get install nginx-light, or set NGINX)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the proxy tests, but: {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The proxy test app under gunicorn -k gevent with our recommended config."""
    server = start_gunicorn(APP, tmp_path_factory.mktemp("proxy-gunicorn"))
    yield server
    server.stop()


@pytest.fixture
def app_server(upstream: Server) -> Iterator[Server]:
    """The upstream; after the test, waits until it has no stream open."""
    yield upstream
    if upstream.process.poll() is None:
        upstream.settled()


@pytest.fixture(scope="session")
def nginx_factory(
    nginx_bin: str, upstream: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NginxFactory]:
    """Start nginx with a variant of the shipped config; each variant once per session."""
    running: dict[str, Nginx] = {}

    def start(
        *, set_directives: dict[str, str] | None = None, remove: tuple[str, ...] = ()
    ) -> Nginx:
        key = repr((sorted((set_directives or {}).items()), remove))
        nginx = running.get(key)
        if nginx is None or nginx.process.poll() is not None:
            port = free_port()
            site = site_config(upstream.port, port, set_directives=set_directives, remove=remove)
            prefix = Path(tmp_path_factory.mktemp("nginx"))
            nginx = running[key] = start_nginx(nginx_bin, site, prefix, port)
        return nginx

    yield start
    for nginx in running.values():
        nginx.stop()


@pytest.fixture(scope="session")
def haproxy_bin() -> str:
    binary = haproxy_binary()
    if binary is None:
        reason = "no haproxy (apt-get install haproxy, or set HAPROXY)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the proxy tests, but: {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def haproxy_factory(
    haproxy_bin: str, upstream: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HAProxyFactory]:
    """Start HAProxy with a variant of the shipped config; each variant once per session."""
    running: dict[str, HAProxy] = {}

    def start(
        *,
        set_directives: dict[str, str] | None = None,
        remove: tuple[str, ...] = (),
        backend: tuple[str, ...] = (),
    ) -> HAProxy:
        key = repr((sorted((set_directives or {}).items()), remove, backend))
        haproxy = running.get(key)
        if haproxy is None or haproxy.process.poll() is not None:
            port = free_port()
            # The shipped maxconn needs twice as many descriptors as a test
            # machine's hard limit may allow.
            directives = {"maxconn": "1000", **(set_directives or {})}
            config = haproxy_config(
                upstream.port, port, set_directives=directives, remove=remove, backend=backend
            )
            haproxy = running[key] = start_haproxy(
                haproxy_bin, config, Path(tmp_path_factory.mktemp("haproxy")), port
            )
        return haproxy

    yield start
    for haproxy in running.values():
        haproxy.stop()
