"""The servers under benchmark: how each is started, found ready and stopped.

Each server is its own process on 127.0.0.1 and a free port, with its
open-file limit raised to the hard limit, started from the repository root
so that ``benchmarks.apps`` and the peers import. Add a peer by adding a
:class:`ServerSpec` to :data:`SERVERS` (a peer from another stack only needs
the same endpoints: ``/pid``, ``/held``, ``/finals``, ``/blocked``,
``/idle``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT
"""Where the servers run from and import the library and apps from."""
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


def _gunicorn(target: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            str(BIN / "gunicorn"),
            "-k",
            "gevent",
            "-w",
            "1",
            "--worker-connections",
            "20000",
            "--graceful-timeout",
            "2",
            "--log-level",
            "warning",
            "-b",
            f"{HOST}:{port}",
            target,
        ]

    return argv


def _ours(target: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "flask_sse_stream",
            "serve",
            target,
            "--host",
            HOST,
            "--port",
            str(port),
            "--no-access-log",
            "--drain-timeout",
            "2",
        ]

    return argv


# gunicorn's quick shutdown: the benchmark has closed its streams, and a
# graceful stop would wait for producers that never write again.
QUICK_EXIT = signal.SIGQUIT


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server under benchmark."""

    name: str
    """Short key, used in the JSON and the tables."""
    label: str
    """What it is, for the tables."""
    ours: bool
    """Ours, or a peer to compare with."""
    argv: Callable[[int], list[str]]
    """The command line, given the port."""
    watches_disconnect: bool
    """Whether it sees a closed client without writing to it."""
    stop_signal: int = signal.SIGTERM
    """How to stop it once the benchmark is done with it."""

    def command(self, port: int = 0) -> str:
        """The command as one would type it from the repository root."""
        parts = self.argv(port or 8000)
        parts[0] = os.path.relpath(parts[0], ROOT) if parts[0].startswith("/") else parts[0]
        return " ".join(parts)


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "ours", "ours, our runner (gevent pywsgi)", True, _ours("benchmarks.apps:app"), True
        ),
        ServerSpec(
            "ours-gunicorn",
            "ours, gunicorn -k gevent",
            True,
            _gunicorn("benchmarks.apps:app"),
            True,
            QUICK_EXIT,
        ),
        ServerSpec(
            "naive",
            "naive Flask view, gunicorn -k gevent",
            False,
            _gunicorn("benchmarks.peer_naive:app"),
            False,
            QUICK_EXIT,
        ),
        ServerSpec(
            "breakdown",
            "memory breakdown app, our runner",
            True,
            _ours("benchmarks.apps_breakdown:app"),
            True,
        ),
        ServerSpec(
            "breakdown-gunicorn",
            "memory breakdown app, gunicorn -k gevent",
            True,
            _gunicorn("benchmarks.apps_breakdown:app"),
            True,
            QUICK_EXIT,
        ),
        ServerSpec(
            "null",
            "null server: one pre-built event, as fast as the socket takes it",
            False,
            lambda port: [sys.executable, "benchmarks/null_server.py", str(port)],
            False,
        ),
        ServerSpec(
            "naive-timer",
            "naive view + per-stream 15 s heartbeat timer, gunicorn -k gevent",
            False,
            _gunicorn("benchmarks.peer_naive:timer_app"),
            False,
            QUICK_EXIT,
        ),
    )
}


def use_source(path: Path) -> None:
    """Run servers (and anything started with :func:`child_env`) from ``path``."""
    global SOURCE
    SOURCE = path


def child_env() -> dict[str, str]:
    """The environment of a server or benchmark process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if SOURCE != ROOT:
        # Before the editable install of the working tree on sys.path.
        env["PYTHONPATH"] = str(SOURCE)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to the hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def get_json(port: int, path: str, timeout: float = 5) -> object:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


class Server:
    """A running server process; use as a context manager."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.port = free_port()
        self.argv = spec.argv(self.port)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        raise_fd_limit()  # the server inherits it (no preexec_fn: safe with threads)
        self.process = subprocess.Popen(
            self.argv,
            cwd=SOURCE,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.pid = self._wait_ready(deadline=time.monotonic() + 30)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, deadline: float) -> int:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited at start-up:\n{self.log()}")
            try:
                answer = get_json(self.port, "/pid", timeout=2)
            except (OSError, http.client.HTTPException, ValueError):
                time.sleep(0.05)
                continue
            assert isinstance(answer, dict)
            library = Path(answer["library"])
            if not library.is_relative_to(SOURCE):
                raise RuntimeError(f"{self.spec.name} imported the library from {library}")
            return int(answer["pid"])
        raise RuntimeError(f"{self.spec.name} not ready within 30 s:\n{self.log()}")

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.spec.stop_signal)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                # Only our own process group: the server and its workers.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
