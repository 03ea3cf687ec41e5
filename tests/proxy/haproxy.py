"""A real HAProxy for the tests: our shipped config, in the foreground.

:func:`haproxy_config` takes ``examples/deploy/haproxy.cfg`` as shipped and
points it at the test's ports, optionally changing a directive's value,
taking a line out or adding lines to the app's backend; :func:`start_haproxy`
runs it without daemonising, so the test owns the process.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from e2e.helpers import HOST, ROOT

SHIPPED = ROOT / "examples" / "deploy" / "haproxy.cfg"


def haproxy_binary() -> str | None:
    """The haproxy executable: ``$HAPROXY``, ``/usr/sbin/haproxy`` or one on PATH."""
    for candidate in (os.environ.get("HAPROXY"), "/usr/sbin/haproxy", shutil.which("haproxy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def haproxy_config(
    upstream_port: int,
    listen_port: int,
    *,
    set_directives: dict[str, str] | None = None,
    remove: tuple[str, ...] = (),
    backend: tuple[str, ...] = (),
) -> str:
    """The shipped config, listening on ``listen_port``, proxying to ``upstream_port``.

    ``set_directives`` replaces the value of every line that starts with
    the given text (``{"timeout server": "3s"}``); ``remove`` drops the
    lines that start with one of the given texts; ``backend`` adds lines to
    the app's backend (``("compression algo gzip",)``).
    """
    text = SHIPPED.read_text()
    text, binds = re.subn(r"(?m)^(\s*)bind :80$", rf"\1bind {HOST}:{listen_port}", text)
    text, servers = re.subn(
        r"(?m)^(\s*server app1) 127\.0\.0\.1:8000$", rf"\1 {HOST}:{upstream_port}", text
    )
    assert binds == 1, "the shipped haproxy.cfg no longer has one `bind :80`"
    assert servers == 1, "the shipped haproxy.cfg no longer has one `server app1 127.0.0.1:8000`"
    for name, value in (set_directives or {}).items():
        text, count = re.subn(rf"(?m)^(\s*){re.escape(name)} .*$", rf"\1{name} {value}", text)
        assert count >= 1, f"the shipped haproxy.cfg has no {name} line"
    for start in remove:
        text, count = re.subn(rf"(?m)^\s*{re.escape(start)}.*\n", "", text)
        assert count == 1, f"the shipped haproxy.cfg has no single {start!r} line"
    if backend:
        text, count = re.subn(
            r"(?m)^(\s*)(server app1 .*)$",
            lambda m: "".join(f"{m[1]}{line}\n" for line in backend) + m[1] + m[2],
            text,
        )
        assert count == 1
    return text


@dataclass
class HAProxy:
    """One HAProxy process in the foreground."""

    port: int
    prefix: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        path = self.prefix / "stderr.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


HAProxyFactory = Callable[..., HAProxy]
"""The ``haproxy_factory`` fixture: ``start(set_directives=..., remove=..., backend=...)``."""


def start_haproxy(
    binary: str, config: str, prefix: Path, port: int, *, timeout: float = 10.0
) -> HAProxy:
    """Run HAProxy with ``config`` (listening on ``port``); wait until it proxies ``/health``."""
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "haproxy.cfg").write_text(config)
    log = (prefix / "stderr.log").open("wb")
    process = subprocess.Popen(
        [binary, "-db", "-f", str(prefix / "haproxy.cfg")],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    haproxy = HAProxy(port, prefix, process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {process.returncode}:\n{haproxy.log()}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return haproxy
            finally:
                conn.close()
        except OSError:
            pass
        if time.monotonic() >= deadline:
            haproxy.stop()
            raise TimeoutError(f"haproxy not proxying within {timeout} s:\n{haproxy.log()}")
        time.sleep(0.05)
