"""Real servers in subprocesses, and a raw-socket HTTP client that shows the framing.

Like werkzeug's ``dev_server`` fixture: each server is a subprocess bound to
a free port on 127.0.0.1, is ready once its health endpoint answers, writes
its stdout and stderr to a log file (printed when a test fails), and is
stopped with SIGTERM, then SIGKILL after a deadline.

:class:`RawClient` talks HTTP/1.1 over a plain socket and parses the
response with h11, which is strict: a malformed header or chunk fails the
test, and every chunk boundary is visible.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h11
from ports import HOST, free_port  # tests/ports.py; imported from here by the other suites

from flask_sse_stream.testing import EventStreamParser, ServerSentEvent

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.e2e.apps:app"

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], timeout: float, interval: float = 0.01, message: str = ""
) -> T:
    """Return the first truthy value of ``condition()``, polling until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


WORKER_CLASSES = {
    "gevent": "gevent",
    "gevent_pywsgi": "gevent_pywsgi",
    "worker": "flask_sse_stream.gunicorn.GeventWorker",
}
"""The gunicorn servers by kind: its two gevent workers, and ours."""

BESIDE = frozenset({"runner", "worker"})
"""The kinds served by our own handler, where streams write beside it."""


def server_command(kind: str, port: int, drain_timeout: float = 3.0) -> list[str]:
    """The command line that serves the test app with ``kind`` on ``port``."""
    python = sys.executable
    if kind == "runner":
        return [
            python,
            "-m",
            "flask_sse_stream",
            "serve",
            APP,
            "--port",
            str(port),
            "--drain-timeout",
            str(drain_timeout),
            # gunicorn's default keepalive is 2 s; a slowloris test need not wait 10.
            "--request-timeout",
            "3",
            "--no-access-log",
        ]
    if kind in WORKER_CLASSES:
        return [
            python,
            "-m",
            "gunicorn",
            "--worker-class",
            WORKER_CLASSES[kind],
            "--workers",
            "1",
            "--worker-connections",
            "4000",
            "--graceful-timeout",
            str(round(drain_timeout)),
            "--bind",
            f"{HOST}:{port}",
            # The default control socket path is shared by every gunicorn of the user.
            "--no-control-socket",
            APP,
        ]
    if kind == "werkzeug":
        return [python, "-m", "flask", "--app", APP, "run", "--host", HOST, "--port", str(port)]
    raise ValueError(f"unknown server kind {kind!r}")


@dataclass
class Server:
    """A server subprocess serving the test app."""

    kind: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: Any = field(repr=False)

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def state(self) -> dict[str, Any]:
        """The app's ``/debug/state``: greenlets, fds, open streams, records."""
        status, body = self.get("/debug/state")
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def settled(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait until no stream is open in the server; return its state."""
        return wait_for(
            lambda: (s := self.state())["open_streams"] == 0 and s,
            timeout,
            interval=0.02,
            message=f"{self.kind}: streams still open after {timeout} s",
        )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited with {self.process.returncode} before it was ready:\n"
                    + self.log()
                )
            try:
                if self.get("/health", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.kind} not ready within {timeout} s:\n" + self.log())
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it is still running after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def start_server(
    kind: str, log_dir: Path, *, drain_timeout: float = 3.0, ready_timeout: float = 20.0
) -> Server:
    """Start the test app under ``kind`` and wait until it answers."""
    port = free_port()
    return start_command(
        kind, port, server_command(kind, port, drain_timeout), log_dir, ready_timeout=ready_timeout
    )


def start_command(
    kind: str,
    port: int,
    command: list[str],
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    ready_timeout: float = 20.0,
) -> Server:
    """Run ``command`` (a server that will listen on ``port``) and wait until it answers."""
    log_path = log_dir / f"{kind}-{port}.log"
    log = log_path.open("wb")
    environ = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        **(env or {}),
    }
    environ.pop("PYTHONWARNINGS", None)
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=environ,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(kind, port, process, log_path, log)
    try:
        server.wait_ready(ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server


class RawClient:
    """One HTTP/1.1 connection on a plain socket, its response read with h11.

    :param rcvbuf: a receive buffer size to set before connecting, to make
        a client whose window fills fast.
    """

    def __init__(self, port: int, *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect((HOST, port))
        self.port = port
        self.conn = h11.Connection(h11.CLIENT)
        self.parser = EventStreamParser()
        self.events: list[ServerSentEvent] = []
        self.body = bytearray()
        self.held = b""
        self.decode: Callable[[bytes], bytes] = bytes
        """Decodes each chunk before the parser sees it: set it to
        ``testing.decoder(coding)`` for a compressed response."""
        self.decoded: list[bytes] = []
        """What each chunk decoded to, in order."""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        *,
        method: str = "GET",
        json_body: Any = None,
        hold_back: int = 0,
    ) -> None:
        """Send a request for ``target``: a GET, or ``method`` with ``json_body`` as JSON.

        The last ``hold_back`` bytes of the body wait for :meth:`send_held`,
        as from a client that uploads slowly.
        """
        body = b"" if json_body is None else json.dumps(json_body).encode()
        length = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        request = h11.Request(
            method=method,
            target=target,
            headers=[
                ("Host", f"{HOST}:{self.port}"),
                ("Accept", "text/event-stream"),
                *(length if json_body is not None else []),
                *(headers or []),
            ],
        )
        data = self.conn.send(request)
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        cut = len(data) - hold_back
        self.sock.sendall(data[:cut])
        self.held = data[cut:]

    def send_held(self) -> None:
        """Send what :meth:`request` held back."""
        self.sock.sendall(self.held)
        self.held = b""

    def next_event(self, timeout: float = 5.0) -> Any:
        """The next h11 event of the response, reading the socket as needed."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete HTTP event within {timeout} s")
            self.sock.settimeout(remaining)
            self.conn.receive_data(self.sock.recv(65536))

    def response(self, timeout: float = 5.0) -> h11.Response:
        event = self.next_event(timeout)
        assert isinstance(event, h11.Response), event
        return event

    def chunk(self, timeout: float = 5.0) -> bytes | None:
        """The next whole chunk of the body, or ``None`` at the end of the message.

        h11 may hand one chunk over in several ``Data`` events as its bytes
        arrive; ``chunk_end`` marks the last. ``chunk_start`` is not reliable:
        h11 drops it when a chunk's size line arrives in an earlier read than
        its data (see encode/httpcore#595), as with werkzeug's server, which
        writes the size line, the data and the CRLF separately.
        """
        parts: list[bytes] = []
        while True:
            event = self.next_event(timeout)
            if isinstance(event, h11.EndOfMessage):
                assert not parts, "the message ended inside a chunk"
                return None
            assert isinstance(event, h11.Data), event
            assert not (event.chunk_start and parts), "a chunk started inside another"
            parts.append(bytes(event.data))
            if event.chunk_end:
                data = b"".join(parts)
                self.body += data
                text = self.decode(data)
                self.decoded.append(text)
                self.events += self.parser.feed(text)
                return data

    def chunks_until_end(self, timeout: float = 5.0) -> list[bytes]:
        """Every remaining chunk, until the terminating chunk."""
        chunks = []
        while (chunk := self.chunk(timeout)) is not None:
            chunks.append(chunk)
        return chunks

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until the server closes the connection (reads to end of file)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the server kept the connection open for {timeout} s")
            self.sock.settimeout(remaining)
            try:
                if not self.sock.recv(65536):
                    return
            except ConnectionResetError:
                return


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw request bytes and read until the server closes the connection."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"the server did not close the connection within {timeout} s; "
                    f"got {bytes(received)!r}"
                )
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                return bytes(received)
            received += data
