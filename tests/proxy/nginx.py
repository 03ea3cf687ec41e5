"""A real nginx for the tests: our recommended config, in the foreground, in a temp prefix.

:func:`site_config` takes ``examples/deploy/nginx.conf`` as shipped and
points it at the test's ports, optionally changing a directive or taking
one out (to get back nginx's default); :func:`start_nginx` wraps it in a
main config whose pid file, logs and temp directories all live in the
prefix, and runs nginx without daemonising, so the test owns the process.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from e2e.helpers import HOST, ROOT

SHIPPED = ROOT / "examples" / "deploy" / "nginx.conf"


def nginx_binary() -> str | None:
    """The nginx executable: ``$NGINX``, ``/usr/sbin/nginx`` or one on PATH."""
    for candidate in (os.environ.get("NGINX"), "/usr/sbin/nginx", shutil.which("nginx")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def site_config(
    upstream_port: int,
    listen_port: int,
    *,
    set_directives: dict[str, str] | None = None,
    remove: tuple[str, ...] = (),
) -> str:
    """The shipped site config, listening on ``listen_port``, proxying to ``upstream_port``.

    ``set_directives`` replaces the value of directives the file has (for
    example ``{"proxy_read_timeout": "3s"}``); ``remove`` drops every line
    that starts with one of the given directive texts, so nginx falls back
    to its default.
    """
    text = SHIPPED.read_text()
    text, listens = re.subn(r"(?m)^(\s*)listen 80;", rf"\1listen {HOST}:{listen_port};", text)
    text, servers = re.subn(
        r"(?m)^(\s*)server 127\.0\.0\.1:8000;", rf"\1server {HOST}:{upstream_port};", text
    )
    assert listens == 1, "the shipped nginx.conf no longer has one `listen 80;`"
    assert servers == 1, "the shipped nginx.conf no longer has one `server 127.0.0.1:8000;`"
    for name, value in (set_directives or {}).items():
        text, count = re.subn(rf"(?m)^(\s*){re.escape(name)} [^;]*;", rf"\1{name} {value};", text)
        assert count == 1, f"the shipped nginx.conf has no single {name} directive"
    for start in remove:
        text, count = re.subn(rf"(?m)^\s*{re.escape(start)}.*\n", "", text)
        assert count == 1, f"the shipped nginx.conf has no single {start!r} line"
    return text


MAIN = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include {prefix}/site.conf;
}}
"""


@dataclass
class Nginx:
    """One nginx master process (and its worker) in the foreground."""

    port: int
    prefix: Path
    process: subprocess.Popen[bytes]

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


NginxFactory = Callable[..., Nginx]
"""The ``nginx_factory`` fixture: ``start(set_directives=..., remove=...)``."""


def start_nginx(
    binary: str, site: str, prefix: Path, port: int, *, https: bool = False, timeout: float = 10.0
) -> Nginx:
    """Run nginx with ``site`` (which listens on ``port``); wait until it proxies ``/health``.

    ``https``: the listener has TLS (any certificate is accepted here).
    """
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    (prefix / "site.conf").write_text(site)
    (prefix / "nginx.conf").write_text(MAIN.format(prefix=prefix))
    log = (prefix / "stderr.log").open("wb")
    process = subprocess.Popen(
        [binary, "-p", f"{prefix}/", "-c", f"{prefix}/nginx.conf", "-e", f"{prefix}/error.log"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    nginx = Nginx(port, prefix, process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"nginx exited with {process.returncode}:\n"
                + (prefix / "stderr.log").read_text(errors="replace")
                + nginx.error_log()
            )
        try:
            conn = (
                http.client.HTTPSConnection(
                    HOST, port, timeout=1, context=ssl._create_unverified_context()
                )
                if https
                else http.client.HTTPConnection(HOST, port, timeout=1)
            )
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return nginx
            finally:
                conn.close()
        except OSError:
            pass
        if time.monotonic() >= deadline:
            nginx.stop()
            raise TimeoutError(f"nginx not proxying within {timeout} s:\n{nginx.error_log()}")
        time.sleep(0.05)
