"""The load client: raw sockets on one epoll loop, its own HTTP and SSE decoding.

Run as its own process so that it never competes with the server for the
interpreter: ``python benchmarks/client.py < job.json`` reads one job (a
JSON object with a ``"scenario"`` key) on stdin and writes one JSON result
on stdout. :mod:`core` starts it; it is not meant to be typed by hand.

It uses no HTTP or SSE library on purpose: a benchmark client that shares
the code under test, or hides the framing, measures the wrong thing. The
decoders are small and only as lenient as the servers under test need:

* the response head is split from the body at the first blank line; the
  body is read chunked (``Transfer-Encoding: chunked``) or up to the close;
* the event stream splits lines on ``\\n``, ``\\r\\n`` and ``\\r``; a
  blank line ends an event; a line starting with ``:`` is a comment; only
  ``data`` and ``event`` fields are kept.

Every event is stamped with ``time.time()`` taken when the ``recv`` that
carried its last byte returned; events decoded from one ``recv`` share it.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import resource
import selectors
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

RECV_SIZE = 65536


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class ChunkedDecoder:
    """Turn a ``Transfer-Encoding: chunked`` body into its payload bytes."""

    __slots__ = ("_buf", "_left", "done")

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0  # payload bytes (then 2 for the CRLF) still due in this chunk
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while pos < end and not self.done:
            if self._left:
                take = min(self._left, end - pos)
                # The trailing CRLF of a chunk is counted in _left but not kept.
                payload = max(0, min(take, self._left - 2))
                if payload:
                    out.append(buf[pos : pos + payload])
                self._left -= take
                pos += take
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                self.done = True
                break
            self._left = size + 2
        self._buf = buf[pos:] if pos < end and not self.done else b""
        return b"".join(out)


class SSEDecoder:
    """Split event-stream bytes into events; count comments."""

    __slots__ = ("_data", "_event", "_pending", "comments")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._event = b""
        self.comments = 0

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Return the ``(event type, data)`` of each event completed by ``data``."""
        buf = self._pending + data if self._pending else data
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                buf, self._pending = buf[:-1], b"\r"  # maybe half of a CRLF
            else:
                self._pending = b""
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            self._pending = b""
        cut = buf.rfind(b"\n")
        if cut < 0:
            self._pending = buf + self._pending
            return []
        self._pending = buf[cut + 1 :] + self._pending
        events: list[tuple[bytes, bytes]] = []
        for line in buf[:cut].split(b"\n"):
            if not line:
                if self._data:
                    events.append((self._event or b"message", b"\n".join(self._data)))
                self._data = []
                self._event = b""
            elif line[0] == 58:  # b":"
                self.comments += 1
            else:
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    self._data.append(value)
                elif name == b"event":
                    self._event = value
        return events


class Conn:
    """One streaming request on a non-blocking socket."""

    __slots__ = (
        "body",
        "chunked",
        "closed_at",
        "eof",
        "events",
        "first_body_at",
        "head",
        "headers_at",
        "key",
        "request",
        "sock",
        "sse",
        "started_at",
        "status",
    )

    def __init__(self, key: str, request: bytes) -> None:
        self.key = key
        self.request = request
        self.sock: socket.socket | None = None
        self.started_at = 0.0
        self.headers_at = 0.0
        self.first_body_at = 0.0
        self.closed_at = 0.0
        self.head = b""
        self.status = 0
        self.chunked: ChunkedDecoder | None = None
        self.body = False
        self.sse = SSEDecoder()
        self.events: list[tuple[float, bytes, bytes]] = []
        self.eof = False


class Loop:
    """An epoll loop over many :class:`Conn`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.connecting = 0  # sent, no first body byte yet

    def open(self, key: str, path: str) -> Conn:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        conn = Conn(key, request)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        conn.sock = sock
        conn.started_at = time.time()
        err = sock.connect_ex((self.host, self.port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
        self.selector.register(sock, selectors.EVENT_WRITE, conn)
        self.conns.append(conn)
        self.connecting += 1
        return conn

    def close(self, conn: Conn) -> float:
        """Close ``conn`` (a normal FIN, as a browser does); return when."""
        sock = conn.sock
        if sock is None:
            return conn.closed_at
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)
        conn.closed_at = time.time()
        sock.close()
        conn.sock = None
        if not conn.first_body_at and not conn.eof:
            self.connecting -= 1
        return conn.closed_at

    def close_all(self) -> None:
        for conn in self.conns:
            self.close(conn)
        self.selector.close()

    def _ready(self, conn: Conn, mask: int) -> None:
        sock = conn.sock
        assert sock is not None
        if mask & selectors.EVENT_WRITE:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._lost(conn)
                return
            sock.send(conn.request)  # a few hundred bytes: fits the empty buffer
            self.selector.modify(sock, selectors.EVENT_READ, conn)
            return
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        now = time.time()
        if not data:
            self._lost(conn)
            return
        if not conn.body:
            data = self._head(conn, data, now)
            if not data:
                return
        payload = conn.chunked.feed(data) if conn.chunked is not None else data
        if payload:
            if not conn.first_body_at:
                conn.first_body_at = now
                self.connecting -= 1
            for event, value in conn.sse.feed(payload):
                conn.events.append((now, event, value))
        if conn.chunked is not None and conn.chunked.done:
            self._lost(conn)

    def _head(self, conn: Conn, data: bytes, now: float) -> bytes:
        head = conn.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            conn.head = head
            return b""
        conn.head = head[:end]
        conn.headers_at = now
        conn.body = True
        lines = conn.head.split(b"\r\n")
        conn.status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                conn.chunked = ChunkedDecoder()
        return head[end + 4 :]

    def _lost(self, conn: Conn) -> None:
        conn.eof = True
        if not conn.first_body_at:
            self.connecting -= 1
        sock = conn.sock
        if sock is not None:
            self.selector.unregister(sock)
            sock.close()
            conn.sock = None
            conn.closed_at = time.time()

    def run(self, until: Callable[[], bool], deadline: float) -> bool:
        """Serve the sockets until ``until()`` or the absolute ``deadline``."""
        select = self.selector.select
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not self.selector.get_map():
                time.sleep(min(left, 0.01))
                continue
            for key, mask in select(min(left, 0.05)):
                self._ready(key.data, mask)
        return True

    def pause(self, seconds: float) -> None:
        """Keep reading for ``seconds``."""
        self.run(lambda: False, time.monotonic() + seconds)

    def open_many(
        self,
        count: int,
        path: Callable[[int], str],
        *,
        in_flight: int = 64,
        stagger: float = 0.0,
        deadline: float,
        key: Callable[[int], str] = str,
    ) -> list[Conn]:
        """Open ``count`` streams, at most ``in_flight`` without a first byte yet."""
        conns = []
        for i in range(count):
            self.run(lambda: self.connecting < in_flight, deadline)
            conns.append(self.open(key(i), path(i)))
            if stagger:
                self.pause(stagger)
        return conns


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile of ``values``, by linear interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    values = [s * 1000 for s in seconds]
    return {
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values) if values else float("nan"),
    }


def get_json(host: str, port: int, path: str, timeout: float = 10) -> Any:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return json.loads(response.read())
    finally:
        conn.close()


def read_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# The scenarios. Each takes the job and returns a JSON-able result.


def ttfb(job: dict[str, Any]) -> dict[str, Any]:
    """S5: time from connect to headers and to the first body bytes."""
    loop = Loop(job["host"], job["port"])
    count = job["connections"]
    path = f"/blocked?seconds={job['block']}"
    deadline = time.monotonic() + job["block"] + 20
    conns = loop.open_many(count, lambda _: path, stagger=job["stagger"], deadline=deadline)
    loop.run(lambda: all(c.first_body_at or c.eof for c in conns), deadline)
    loop.close_all()
    ok = [c for c in conns if c.first_body_at and c.status == 200]
    return {
        "ok": len(ok),
        "connections": count,
        "headers": summary_ms([c.headers_at - c.started_at for c in ok]),
        "first_body": summary_ms([c.first_body_at - c.started_at for c in ok]),
    }


def disconnect(job: dict[str, Any]) -> dict[str, Any]:
    """S4: from the client's close to the producer's ``finally`` on the server."""
    host, port, prefix = job["host"], job["port"], job["prefix"]
    loop = Loop(host, port)
    count = job["closes"]
    start = time.monotonic()
    conns = loop.open_many(
        count,
        lambda i: f"/held?id={prefix}-{i}&period={job['period']}",
        key=lambda i: f"{prefix}-{i}",
        deadline=start + 30,
    )
    live = loop.run(lambda: all(c.events or c.eof for c in conns), start + 30)
    if not live or any(c.eof for c in conns):
        loop.close_all()
        raise RuntimeError("not every stream delivered its probe event")
    closed: dict[str, float] = {}
    for conn in conns:
        closed[conn.key] = loop.close(conn)
        loop.pause(job["gap"])
    loop.close_all()
    if job.get("closed_flag"):
        with open(job["closed_flag"], "w"):
            pass  # tells core.py that the closes are done
    deadline = time.monotonic() + job["wait"]
    finals: dict[str, float] = {}
    while time.monotonic() < deadline:
        finals = get_json(host, port, f"/finals?prefix={prefix}-")
        if len(finals) >= count:
            break
        time.sleep(job["poll"])
    latencies = [finals[key] - at for key, at in closed.items() if key in finals]
    return {
        "closes": count,
        "cleaned_up": len(latencies),
        "missing": count - len(latencies),
        "waited_s": job["wait"],
        **summary_ms(latencies),
    }


def idle(job: dict[str, Any]) -> dict[str, Any]:
    """S1: worker RSS and CPU time with many idle streams, all proven live."""
    host, port, pid, count = job["host"], job["port"], job["pid"], job["streams"]
    loop = Loop(host, port)
    start = time.monotonic()
    # Warm up first, so that lazy imports and first-use caches are not
    # counted as per-stream memory.
    path = job.get("path", "/idle")
    warm = loop.open_many(job["warmup"], lambda _: path, deadline=start + 30)
    loop.run(lambda: all(c.events for c in warm), start + 30)
    for conn in warm:
        loop.close(conn)
    loop.pause(job["settle"])
    rss_before = read_rss_kib(pid)
    opened = time.monotonic()
    conns = loop.open_many(count, lambda _: path, deadline=opened + 120)
    live = loop.run(lambda: all(c.events or c.eof for c in conns), opened + 120)
    proven = sum(1 for c in conns if c.events and not c.eof)
    open_seconds = time.monotonic() - opened
    if not live or proven < count:
        loop.close_all()
        raise RuntimeError(f"only {proven} of {count} streams delivered their probe event")
    loop.pause(job["settle"])
    rss_after = read_rss_kib(pid)
    comments_before = sum(c.sse.comments for c in conns)
    cpu_start, wall_start = read_cpu_seconds(pid), time.monotonic()
    loop.pause(job["window"])
    cpu_end, wall_end = read_cpu_seconds(pid), time.monotonic()
    still_open = sum(1 for c in conns if not c.eof)
    comments = sum(c.sse.comments for c in conns) - comments_before
    loop.close_all()
    return {
        "streams": count,
        "proven_live": proven,
        "still_open_after_window": still_open,
        "open_seconds": open_seconds,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "kib_per_stream": (rss_after - rss_before) / count,
        "window_s": wall_end - wall_start,
        "cpu_s": cpu_end - cpu_start,
        "cpu_pct": 100 * (cpu_end - cpu_start) / (wall_end - wall_start),
        "heartbeats_in_window": comments,
    }


def ceiling(job: dict[str, Any]) -> dict[str, Any]:
    """The client's own limit: events decoded per second from the null server."""
    loop = Loop(job["host"], job["port"])
    count = job["connections"]
    start = time.monotonic()
    conns = loop.open_many(count, lambda _: "/", deadline=start + 30)
    loop.run(lambda: all(c.events or c.eof for c in conns), start + 30)
    before = sum(len(c.events) for c in conns)
    cpu_start, wall_start = time.process_time(), time.monotonic()
    loop.pause(job["window"])
    cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    events = sum(len(c.events) for c in conns) - before
    loop.close_all()
    return {
        "connections": count,
        "window_s": wall,
        "events": events,
        "events_per_s": events / wall,
        "client_cpu_pct": 100 * cpu / wall,
    }


SCENARIOS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ceiling": ceiling,
    "ttfb": ttfb,
    "disconnect": disconnect,
    "idle": idle,
}


def main() -> None:
    raise_fd_limit()
    job = json.load(sys.stdin)
    result = SCENARIOS[job["scenario"]](job)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
