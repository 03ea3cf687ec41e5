"""Starting the servers the browser and proxy tests talk to.

Each is a subprocess on a free port of 127.0.0.1, started from the
repository root, logging to a file, ready once a path answers 200 (the same
:class:`~e2e.helpers.Server` the end-to-end tests use, so it stops the same
way: SIGTERM, then SIGKILL after a deadline).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from e2e.helpers import ROOT, Server, free_port

GUNICORN_CONF = "python:flask_sse_stream.gunicorn_conf"
APP = "tests.browser.app:app"

LIVE: list[Server] = []
"""Servers the browser tests started and that are running; each ``page``
fixture waits, when its test ends, until they have no stream open."""


@contextmanager
def live(server: Server) -> Iterator[Server]:
    """Keep ``server`` in :data:`LIVE` for the ``with``; stop it at the end."""
    LIVE.append(server)
    try:
        yield server
    finally:
        LIVE.remove(server)
        server.stop()


def skip_or_fail(reason: str) -> None:
    """Skip, or fail when running in CI, where nothing may be skipped."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests, but: {reason}", pytrace=False)
    pytest.skip(reason)


def runner_command(app: str, port: int) -> list[str]:
    """Our runner: ``python -m flask_sse_stream serve APP``."""
    return [
        sys.executable,
        "-m",
        "flask_sse_stream",
        "serve",
        app,
        "--port",
        str(port),
        "--drain-timeout",
        "2",
        "--no-access-log",
    ]


def gunicorn_command(app: str, port: int, worker: str = "gevent") -> list[str]:
    """``gunicorn -k gevent`` with the config we recommend, one worker."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        GUNICORN_CONF,
        "--worker-class",
        worker,
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
        # The default control socket path is shared by every gunicorn of the user.
        "--no-control-socket",
        app,
    ]


def start(
    name: str,
    command: list[str],
    port: int,
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    ready_path: str = "/health",
    ready_timeout: float = 20.0,
) -> Server:
    """Run ``command`` (which serves on ``port``) and wait until ``ready_path`` answers 200."""
    log_path = log_dir / f"{name}-{port}.log"
    log = log_path.open("ab")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    full_env.pop("PYTHONWARNINGS", None)
    full_env.update(env or {})
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(name, port, process, log_path, log)
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log()}")
            try:
                if server.get(ready_path, timeout=1)[0] == 200:
                    return server
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{name} not ready within {ready_timeout} s:\n{server.log()}")
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise


def start_runner(
    app: str,
    log_dir: Path,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready_path: str = "/health",
) -> Server:
    """Serve ``app`` with our runner, on ``port`` or a free one."""
    port = port or free_port()
    command = runner_command(app, port)
    return start("runner", command, port, log_dir, env=env, ready_path=ready_path)


def start_gunicorn(
    app: str, log_dir: Path, *, env: dict[str, str] | None = None, ready_path: str = "/health"
) -> Server:
    """Serve ``app`` with ``gunicorn -k gevent -c python:flask_sse_stream.gunicorn_conf``."""
    port = free_port()
    command = gunicorn_command(app, port)
    return start("gunicorn", command, port, log_dir, env=env, ready_path=ready_path)
