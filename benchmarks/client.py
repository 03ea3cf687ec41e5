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
        if b"\r" not in buf and not self._data and not self._event:
            return self._feed_blocks(buf)
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
            self._line(line, events)
        return events

    def _feed_blocks(self, buf: bytes) -> list[tuple[bytes, bytes]]:
        # The common case, fast: whole events split at blank lines, most of
        # them a single "data: " line; anything else goes line by line.
        blocks = buf.split(b"\n\n")
        tail = blocks.pop()  # not ended by a blank line yet
        events: list[tuple[bytes, bytes]] = []
        for block in blocks:
            if b"\n" not in block:
                if block[:6] == b"data: ":
                    events.append((b"message", block[6:]))
                    continue
                if block[:1] == b":":
                    self.comments += 1
                    continue
            for line in block.split(b"\n"):
                self._line(line, events)
            self._line(b"", events)
        # Whole lines of the tail count now: a heartbeat is a lone ":\n"
        # that no blank line may follow for a long time.
        cut = tail.rfind(b"\n")
        if cut >= 0:
            for line in tail[:cut].split(b"\n"):
                self._line(line, events)
        self._pending = tail[cut + 1 :]
        return events

    def _line(self, line: bytes, events: list[tuple[bytes, bytes]]) -> None:
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


class Conn:
    """One streaming request on a non-blocking socket."""

    __slots__ = (
        "body",
        "chunked",
        "closed_at",
        "eof",
        "events",
        "first_body_at",
        "got_event",
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
        self.got_event = False
        self.eof = False


class Loop:
    """An epoll loop over many :class:`Conn`."""

    def __init__(self, host: str, port: int, source: str | None = None) -> None:
        self.host = host
        self.port = port
        self.source = source
        """A loopback address to connect from (past one address's ephemeral ports)."""
        self.selector = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.connecting = 0  # sent, no first body byte yet
        self.settled = 0  # connections with a first event, or lost before one

    def open(self, key: str, path: str, method: str = "GET") -> Conn:
        if method == "GET":
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
        else:  # a short request, answered and closed
            request = (
                f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n"
            ).encode()
        conn = Conn(key, request)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        conn.sock = sock
        conn.started_at = time.time()
        try:
            if self.source is not None:
                sock.bind((self.source, 0))
            err = sock.connect_ex((self.host, self.port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
        except OSError:
            sock.close()
            raise
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
            try:
                sock.send(conn.request)  # a few hundred bytes: fits the empty buffer
            except OSError:  # reset by a server that is full
                self._lost(conn)
                return
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
            events = conn.sse.feed(payload)
            if events:
                conn.events += [(now, event, value) for event, value in events]
                if not conn.got_event:
                    conn.got_event = True
                    self.settled += 1
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
        if not conn.got_event and not conn.eof:
            self.settled += 1
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
    """The CPU time, user and system, that process ``pid`` has used so far.

    Read from the process's CPU-time clock (Linux: ``clock_gettime`` on the
    clock id made from the pid, nanoseconds), not from ``utime`` and
    ``stime`` in ``/proc``, which count ticks of 10 ms: 0.05 % of a core
    over 20 s, a whole step between two idle figures, is one tick.
    """
    try:
        # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) of linux/posix-timers.h.
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
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
        deadline=start + 60,
    )
    live = loop.run(lambda: all(c.events or c.eof for c in conns), start + 60)
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


def _flag(path: str | None) -> None:
    if path:
        with open(path, "w"):
            pass


def idle(job: dict[str, Any]) -> dict[str, Any]:
    """S1: worker RSS and CPU time with many idle streams, all proven live.

    Streams are opened in stages (``sizes``, e.g. 1,000 then 5,000 then
    10,000 in all); after each stage every stream has delivered its probe
    event and the RSS is read. The idle CPU is measured at the last stage.
    A stage that cannot be reached (refused, reset, out of file
    descriptors, too slow) ends the run with ``failed`` set, not an error.
    ``extra_pids`` (e.g. the peer's redis-server) are read as well.
    """
    host, port, pid = job["host"], job["port"], job["pid"]
    sizes = job.get("sizes") or [job["streams"]]
    extra = job.get("extra_pids", {})
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
    extra_before = {name: read_rss_kib(p) for name, p in extra.items()}
    conns: list[Conn] = []
    base = loop.settled  # the warm-up streams
    stages = []
    failed = None
    for size in sizes:
        opened, cpu_opening, before = time.monotonic(), read_cpu_seconds(pid), len(conns)
        try:
            conns += loop.open_many(size - len(conns), lambda _: path, deadline=opened + 120)
        except OSError as exc:
            failed = f"opening stream {len(conns) + 1}: {exc}"
            break
        target = base + size
        loop.run(lambda: loop.settled >= target, opened + 120)  # noqa: B023 - called here
        proven = sum(1 for c in conns if c.events and not c.eof)
        if proven < size:
            failed = f"only {proven} of {size} streams delivered their probe event"
            break
        # The server's CPU time, less noisy than the wall time to open on a
        # shared machine (the client competes for the same cores).
        open_cpu = read_cpu_seconds(pid) - cpu_opening
        loop.pause(job["settle"])
        rss = read_rss_kib(pid)
        stage = {
            "streams": size,
            "open_seconds": time.monotonic() - opened,
            "open_cpu_us_per_stream": open_cpu / (size - before) * 1e6,
            "rss_kib": rss,
            "kib_per_stream": (rss - rss_before) / size,
        }
        stage.update(
            {
                f"{name}_kib_per_stream": (read_rss_kib(extra_pid) - extra_before[name]) / size
                for name, extra_pid in extra.items()
            }
        )
        stages.append(stage)
    _flag(job.get("opened_flag"))  # tells core.py that the next server may start opening
    result: dict[str, Any] = {
        "sizes": sizes,
        "stages": {str(stage["streams"]): stage for stage in stages},
        "failed": failed,
        "rss_before_kib": rss_before,
    }
    if failed is None:
        count = len(conns)
        comments_before = sum(c.sse.comments for c in conns)
        cpu_start, wall_start = read_cpu_seconds(pid), time.monotonic()
        extra_cpu = {name: read_cpu_seconds(p) for name, p in extra.items()}
        loop.pause(job["window"])
        cpu_end, wall_end = read_cpu_seconds(pid), time.monotonic()
        window = wall_end - wall_start
        result.update(
            streams=count,
            still_open_after_window=sum(1 for c in conns if not c.eof),
            window_s=window,
            cpu_s=cpu_end - cpu_start,
            cpu_pct=100 * (cpu_end - cpu_start) / window,
            heartbeats_in_window=sum(c.sse.comments for c in conns) - comments_before,
            # The single-size fields the earlier reports read.
            kib_per_stream=stages[-1]["kib_per_stream"],
            rss_after_kib=stages[-1]["rss_kib"],
            open_seconds=stages[-1]["open_seconds"],
            open_cpu_us_per_stream=stages[-1]["open_cpu_us_per_stream"],
        )
        for name, extra_pid in extra.items():
            used = read_cpu_seconds(extra_pid) - extra_cpu[name]
            result[f"{name}_cpu_pct"] = 100 * used / window
    loop.close_all()
    return result


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


def _stamp(data: bytes) -> tuple[float, bytes] | None:
    """The publish time and tag of a stamped event (see payload.stamped), if it is one."""
    if data[:1] == b'"':  # a JSON string (FastAPI's plain-str items): its text
        data = data[1:-1]
    parts = data.split(b" ", 3)
    if len(parts) < 4:
        return None
    try:
        return float(parts[0]), parts[2]
    except ValueError:
        return None


def _server_cpu(job: dict[str, Any]) -> float:
    """CPU seconds of the server: its processes (``pids``, e.g. workers) or ``pid``."""
    return sum(read_cpu_seconds(pid) for pid in job.get("pids") or [job["pid"]])


def _cpu() -> float:
    return time.process_time()


class Fanout:
    """The subscribers of S2 and what they received in the current phase."""

    def __init__(self, loop: Loop, subs: list[Conn]) -> None:
        self.loop = loop
        self.subs = subs
        self.received = [0] * len(subs)
        self.events: list[tuple[float, bytes, bytes]] = []
        self.least = 0
        self._collected = 0.0

    def collect(self, every: float = 0.0) -> int:
        """Move decoded events out of the connections; return the least received.

        With ``every``, only if that many seconds have passed since the last
        time: a pass costs O(subscribers), and a loop that makes one per
        ``select`` would be the bottleneck. Receipt times are taken at
        ``recv``, so collecting later changes no figure.
        """
        now = time.monotonic()
        if every and now - self._collected < every:
            return self.least
        self._collected = now
        received, events = self.received, self.events
        for i, conn in enumerate(self.subs):
            if conn.events:
                received[i] += len(conn.events)
                events += conn.events
                conn.events = []
        self.least = min(received)
        return self.least

    def next_phase(self) -> None:
        self.received = [0] * len(self.subs)
        self.events = []
        self.least = 0

    def saturate(self, job: dict[str, Any]) -> dict[str, Any]:
        loop = self.loop
        window, burst = job["window"], job["burst"]
        published = 0
        requests: list[Conn] = []
        server0 = _server_cpu(job)
        cpu0 = _cpu()
        start = time.monotonic()
        end = start + job["sat_seconds"]
        while True:
            now = time.monotonic()
            least = self.collect(every=0.005)
            for request in [r for r in requests if r.eof]:
                if request.status != 200:
                    raise RuntimeError(f"publish answered {request.status}")
                loop.conns.remove(request)
                requests.remove(request)
            if now < end:
                # Several requests may be in flight: the window, not the
                # round trip of one request, bounds the publisher.
                while published + burst - least <= window:
                    path = f"/bench/publish?count={burst}&tag=s"
                    requests.append(loop.open("publish", path, "POST"))
                    published += burst
            elif (not requests and least >= published) or now > end + job["drain_timeout"]:
                break
            for key, mask in loop.selector.select(0.002):
                loop._ready(key.data, mask)
        wall, cpu = time.monotonic() - start, _cpu() - cpu0
        stamps = [st[0] for st in (_stamp(d) for _, _, d in self.events) if st is not None]
        span = max(t for t, _, _ in self.events) - min(stamps) if stamps else float("nan")
        delivered = sum(self.received)
        return {
            "published": published,
            "delivered": delivered,
            "expected": published * len(self.subs),
            "span_s": span,
            "delivered_per_s": delivered / span if delivered else 0.0,
            "client_cpu_pct": 100 * cpu / wall,
            "server_cpu_pct": 100 * (_server_cpu(job) - server0) / wall,
            "publish_requests": published // burst,
        }

    def steady(self, job: dict[str, Any]) -> dict[str, Any]:
        loop = self.loop
        rate, seconds = job["rate"], job["lat_seconds"]
        events = int(rate * seconds)
        path = f"/bench/publish?count={events}&interval={1 / rate}&tag=l"
        answer = loop.open("steady", path, "POST")
        server0 = _server_cpu(job)
        cpu0, start = _cpu(), time.monotonic()
        loop.run(lambda: self.collect(every=0.02) >= events, start + seconds + job["drain_timeout"])
        self.collect()
        wall, cpu = time.monotonic() - start, _cpu() - cpu0
        latencies = []
        for receipt, _, data in self.events:
            stamp = _stamp(data)
            if stamp is not None and stamp[1] == b"l":
                latencies.append(receipt - stamp[0])
        return {
            "rate": rate,
            "events": events,
            "answer_status": answer.status,
            "delivered": len(latencies),
            "expected": events * len(self.subs),
            "client_cpu_pct": 100 * cpu / wall,
            "server_cpu_pct": 100 * (_server_cpu(job) - server0) / wall,
            **summary_ms(latencies),
            "p999_ms": percentile([x * 1000 for x in latencies], 99.9),
        }


def fanout(job: dict[str, Any]) -> dict[str, Any]:
    """S2: subscribers of one channel; saturation, then a steady rate.

    Phase ``lat`` (first): the server publishes ``rate`` events/s for
    ``lat_seconds`` on its own schedule (open loop); the latency of every
    delivery is its receipt time minus the publish time in its data.

    Phase ``sat``: the client publishes bursts of ``burst`` events
    (``POST /bench/publish``, one request at a time) while at most
    ``window`` events per subscriber are in flight (published minus the
    least any subscriber has received), for ``sat_seconds``; delivered
    events/s = deliveries / (last receipt - first publish).
    """
    host, port, count = job["host"], job["port"], job["subscribers"]
    loop = Loop(host, port)
    start = time.monotonic()
    # Some servers send nothing (not even headers) before a first event:
    # keep every connection in flight.
    subs = loop.open_many(count, lambda _: job["path"], in_flight=count, deadline=start + 120)
    # A stream may send nothing before its first event (flask-sse): wait
    # for the server to count every subscriber instead of a first byte;
    # with several workers, none counts them all: wait for a first event.
    deadline = time.monotonic() + 60
    if job.get("ready") == "event":
        if not loop.run(lambda: all(c.events or c.eof for c in subs), deadline) or any(
            c.eof for c in subs
        ):
            loop.close_all()
            raise RuntimeError("not every subscriber got its first event")
        for conn in subs:
            conn.events = []
    while job.get("ready") != "event":
        loop.pause(0.05)
        counted = get_json(host, port, "/bench/subscribers")["subscribers"]
        if counted >= count:
            break
        if time.monotonic() > deadline or any(c.eof for c in subs):
            loop.close_all()
            raise RuntimeError(f"only {counted} of {count} subscribers registered")
    open_seconds = time.monotonic() - start
    run = Fanout(loop, subs)
    results: dict[str, Any] = {"subscribers": count, "open_seconds": open_seconds}
    for _ in range(job.get("rounds", 1)):
        # The steady rate first: saturation leaves a backlog in a server
        # that cannot keep up (flask-sse), which would count as latency.
        run.next_phase()
        results.setdefault("lat", []).append(run.steady(job))
        run.next_phase()
        results.setdefault("sat", []).append(run.saturate(job))
    results["still_open"] = sum(1 for c in subs if not c.eof)
    loop.close_all()
    return results


def single(job: dict[str, Any]) -> dict[str, Any]:
    """S3: one stream of numbered events as fast as the server sends them."""
    loop = Loop(job["host"], job["port"])
    start = time.monotonic()
    conn = loop.open("burst", job.get("path", "/burst"))
    loop.run(lambda: bool(conn.events) or conn.eof, start + 30)
    loop.pause(job["warmup"])
    conn.events = []
    cpu0, wall0 = _cpu(), time.monotonic()
    server0 = _server_cpu(job)
    first = last = -1
    gaps = events = 0
    end = wall0 + job["window"]
    while time.monotonic() < end and not conn.eof:
        loop.run(lambda: bool(conn.events), end)
        # Check the numbering as we go: memory stays flat however fast.
        for _, _, data in conn.events:
            number = int(data[1:9] if data[:1] == b'"' else data[:8])
            if first < 0:
                first = number
            elif number != last + 1:
                gaps += 1
            last = number
            events += 1
        conn.events = []
    wall, cpu = time.monotonic() - wall0, _cpu() - cpu0
    loop.close_all()
    return {
        "events": events,
        "window_s": wall,
        "events_per_s": events / wall,
        "gaps": gaps,
        "eof": conn.eof,
        "client_cpu_pct": 100 * cpu / wall,
        "server_cpu_pct": 100 * (_server_cpu(job) - server0) / wall,
    }


def _wait_file(loop: Loop, path: str, deadline: float) -> bool:
    """Keep reading the streams until ``path`` exists (a signal from scale.py)."""
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        loop.pause(0.1)
    return True


def _write_json(path: str, value: object) -> None:
    with open(path + ".tmp", "w") as out:
        json.dump(value, out)
    os.rename(path + ".tmp", path)  # whole, for the reader that waits for it


def _open_scale(loop: Loop, job: dict[str, Any]) -> tuple[list[Conn], str | None]:
    """Open the scale client's streams; stop at an error or when none opens for a while."""
    count, path = job["streams"], job["path"]
    deadline = time.monotonic() + job["open_timeout"]
    conns: list[Conn] = []
    failed = None
    progress = [loop.settled, time.monotonic()]  # streams settled, and when that last grew

    def stalled() -> bool:
        if loop.settled != progress[0]:
            progress[:] = [loop.settled, time.monotonic()]
        return time.monotonic() - progress[1] > job["stall"]

    while len(conns) < count and failed is None:
        if len(conns) % 1000 == 0 and os.path.exists(job["stop_flag"]):
            failed = "stopped by scale.py (memory)"
            break
        while loop.connecting >= job["in_flight"] and not stalled():
            loop.run(lambda: loop.connecting < job["in_flight"], time.monotonic() + 0.5)
        if stalled() or time.monotonic() > deadline:
            failed = (
                f"stalled: no stream opened for {job['stall']} s, {loop.connecting} "
                f"waiting for a first byte, after {len(conns) - loop.connecting} opened"
            )
            break
        try:
            conns.append(loop.open(str(len(conns)), path))
        except OSError as exc:
            failed = f"opening stream {len(conns) + 1}: {exc}"
        if len(conns) % 1000 == 0:
            lost = sum(1 for c in conns if c.eof)
            if lost:
                failed = f"{lost} streams closed by the server while opening"
    while loop.settled < len(conns) and not stalled():
        loop.run(lambda: loop.settled >= len(conns), time.monotonic() + 0.5)
    return conns, failed


def scale(job: dict[str, Any]) -> dict[str, Any]:
    """One of the scale scenario's clients: many idle streams from one source address.

    Opens ``streams`` streams from ``source`` (at most ``in_flight`` without
    a first byte), each proven live by its first event; stops opening early
    at the first error (out of ports or descriptors, refused, reset) or when
    the ``stop_flag`` file appears (scale.py watches the machine's memory).
    Writes what it holds to ``opened_flag``, keeps reading through the idle
    window, and once ``probe_flag`` exists (one event published to every
    stream) counts the streams that got the event tagged ``p`` and its
    latency. Closes everything when ``done_flag`` appears.
    """
    loop = Loop(job["host"], job["port"], job.get("source"))
    start = time.monotonic()
    conns, failed = _open_scale(loop, job)
    open_seconds = time.monotonic() - start
    live = [c for c in conns if c.events and not c.eof]
    for conn in conns:
        conn.events = []
    opened = {"live": len(live), "attempted": len(conns), "open_seconds": open_seconds}
    _write_json(job["opened_flag"], {**opened, "failed": failed})
    comments0 = sum(c.sse.comments for c in live)
    result: dict[str, Any] = {
        "source": job.get("source"),
        "attempted": len(conns),
        "live": len(live),
        "open_seconds": open_seconds,
        "failed": failed,
    }
    if not _wait_file(loop, job["probe_flag"], time.monotonic() + job["hold_timeout"]):
        result["failed"] = failed or "no probe signal"
    else:
        probe_deadline = time.monotonic() + job["probe_timeout"]
        got: dict[int, float] = {}

        def arrived() -> bool:
            for i, conn in enumerate(live):
                if i not in got and conn.events:
                    for at, _, data in conn.events:
                        stamp = _stamp(data)
                        if stamp is not None and stamp[1] == b"p":
                            got[i] = at - stamp[0]
                            break
                    conn.events = []
            return len(got) >= len(live)

        while not arrived() and time.monotonic() < probe_deadline:
            loop.pause(0.05)
        result.update(
            probe_received=len(got),
            probe_latency=summary_ms(list(got.values())),
            still_open=sum(1 for c in live if not c.eof),
            heartbeats=sum(c.sse.comments for c in live) - comments0,
        )
    _write_json(job["result_file"], result)
    _wait_file(loop, job["done_flag"], time.monotonic() + job["hold_timeout"])
    loop.close_all()
    return result


SCENARIOS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ceiling": ceiling,
    "ttfb": ttfb,
    "disconnect": disconnect,
    "idle": idle,
    "fanout": fanout,
    "single": single,
    "scale": scale,
}


def main() -> None:
    raise_fd_limit()
    job = json.load(sys.stdin)
    result = SCENARIOS[job["scenario"]](job)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
