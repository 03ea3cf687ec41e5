"""HTTP/2 at the proxy lifts the six-connections-per-host limit.

nginx (the shipped config, with TLS and HTTP/2 on its listener) in front of
our runner; Chromium loads the test page over HTTPS and opens more than six
streams to the same host: over HTTP/2 they share one connection, and all of
them open at once. The certificate is self-signed, made for the test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.helpers import HOST, Server, free_port, wait_for
from proxy.nginx import Nginx, nginx_binary, site_config, start_nginx

from .servers import skip_or_fail

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(30)]

STREAMS = 8


@pytest.fixture
def https_nginx(runner: Server, tmp_path: Path) -> Iterator[Nginx]:
    binary = nginx_binary()
    openssl = shutil.which("openssl")
    if binary is None or openssl is None:
        skip_or_fail("needs nginx and openssl (apt-get install nginx-light openssl)")
    assert binary is not None
    assert openssl is not None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    port = free_port()
    site = site_config(runner.port, port)
    site, count = re.subn(
        rf"listen {HOST}:{port};",
        f"listen {HOST}:{port} ssl http2;\n"
        f"    ssl_certificate {cert};\n    ssl_certificate_key {key};",
        site,
    )
    assert count == 1
    nginx = start_nginx(binary, site, tmp_path / "nginx", port, https=True)
    yield nginx
    nginx.stop()


def test_over_http2_more_than_six_streams_to_one_host_all_open(
    browser: Any, runner: Server, https_nginx: Nginx
) -> None:
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.goto(f"https://{HOST}:{https_nginx.port}/page")
        assert page.evaluate('performance.getEntriesByType("navigation")[0].nextHopProtocol') == (
            "h2"
        )
        token = uuid.uuid4().hex
        page.evaluate(
            """([token, count]) => { window.extra = Array.from({length: count},
                (_, i) => new EventSource(`/blocked?token=${token}-${i}`)); }""",
            [token, STREAMS],
        )
        page.wait_for_function(
            f"window.extra.filter((s) => s.readyState === EventSource.OPEN).length === {STREAMS}"
        )
        wait_for(
            lambda: len([t for t in runner.state()["started"] if t.startswith(token)]) == STREAMS,
            timeout=5,
        )
    finally:
        context.close()
    runner.settled()
