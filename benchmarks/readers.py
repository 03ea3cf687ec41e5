"""Lean subscribers for fan-out benchmarks: many streams per process, several processes.

:mod:`client`'s loop decodes every event (HTTP chunks, SSE fields, a Python
object per event): right for latency figures, but at a million deliveries a
second it needs more CPU than the server it measures. These readers do only
what a "got every event, in order" figure needs:

* raw non-blocking sockets on one ``epoll`` per process, ``recv`` into bytes;
  a process looks at its sockets every ``every`` seconds (50 ms by default)
  and reads all that is ready then, so that one ``recv`` takes several of the
  server's writes: a reader that wakes for each write costs more than the
  server that made it. The kernel's receive buffer holds the rest meanwhile;
  the server's queue for the stream does not grow (its writes still succeed);
* per ``recv``, the complete events (up to the last blank line; the rest waits
  for the next one) are searched with one regular expression for their
  sequence number (``"n":<digits>`` in the data, which the publisher numbers
  0, 1, 2...), and the numbers found are compared, as bytes, with a slice of
  the expected ones: every event is checked, in order, without decoding it.

The chunk-size lines of the HTTP body sit between frames, never inside an
event, so the search ignores them. A stream whose numbers ever skip, repeat
or go back is counted as incomplete.

:class:`Readers` starts ``processes`` processes (``fork``) with ``count``
streams between them and talks to them through pipes.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import re
import select
import socket
import time
from typing import Any

from client import raise_fd_limit

NUMBER = re.compile(rb'"n":(\d+)')


class _Stream:
    __slots__ = ("carry", "eof", "next", "ok", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.carry = b""
        self.next = 0
        self.ok = True
        self.eof = False


def _open(address: tuple[str, int], path: str, count: int) -> dict[int, _Stream]:
    request = f"GET {path} HTTP/1.1\r\nHost: {address[0]}\r\n\r\n".encode()
    streams: dict[int, _Stream] = {}
    for _ in range(count):
        sock = socket.create_connection(address)
        sock.sendall(request)
        sock.setblocking(False)
        streams[sock.fileno()] = _Stream(sock)
    return streams


def _check(stream: _Stream, data: bytes, expected: list[bytes]) -> None:
    """Check the numbers of the complete events in ``data`` (after what the stream kept)."""
    if stream.carry:
        data = stream.carry + data
    end = data.rfind(b"\n\n")
    if end < 0:
        stream.carry = data
        return
    stream.carry = data[end:]
    found = NUMBER.findall(data, 0, end)
    if found:
        first = stream.next
        last = first + len(found)
        if found != expected[first:last]:
            stream.ok = False
            last = int(found[-1]) + 1
        stream.next = last


def _report(streams: dict[int, _Stream], until: int) -> dict[str, int]:
    return {
        "streams": len(streams),
        "complete": sum(s.ok and s.next == until for s in streams.values()),
        "eof": sum(s.eof for s in streams.values()),
        "least": min(s.next for s in streams.values()),
    }


def _serve(
    address: tuple[str, int],
    path: str,
    count: int,
    limits: tuple[int, float],
    pipe: multiprocessing.connection.Connection,
) -> None:
    """One reader process: open ``count`` streams, read them, answer the parent."""
    raise_fd_limit()
    limit, every = limits
    expected = [b"%d" % n for n in range(limit)]
    streams = _open(address, path, count)
    poll = select.epoll()
    for fd in streams:
        poll.register(fd, select.EPOLLIN)
    control = pipe.fileno()
    poll.register(control, select.EPOLLIN)
    pipe.send("open")
    until: int | None = None
    deadline = 0.0
    while True:
        if until is not None and (
            time.monotonic() > deadline or all(s.eof or s.next >= until for s in streams.values())
        ):
            pipe.send(_report(streams, until))
            until = None
        ready = poll.poll(0.2)
        if every and len(ready) < len(streams) // 2:
            time.sleep(every)  # let the rest come: one recv then takes several writes
            ready = poll.poll(0)
        for fd, _ in ready:
            if fd == control:
                message = pipe.recv()
                if message == "close":
                    for stream in streams.values():
                        stream.sock.close()
                    return
                until, deadline = message  # (published, monotonic deadline)
                continue
            stream = streams[fd]
            try:
                data = stream.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                _check(stream, data, expected)
            else:
                stream.eof = True
                poll.unregister(fd)


class Readers:
    """``count`` streams of ``path`` read by ``processes`` processes; see the module docstring.

    :param limit: more than the highest sequence number the run publishes.
    :param every: seconds between two looks at the sockets (0: as soon as one is ready).
    """

    def __init__(
        self,
        address: tuple[str, int],
        path: str,
        count: int,
        *,
        processes: int,
        limit: int,
        every: float = 0.05,
    ) -> None:
        context = multiprocessing.get_context("fork")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[Any] = []
        shares = [count // processes + (i < count % processes) for i in range(processes)]
        for share in shares:
            if not share:
                continue
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_serve, args=(address, path, share, (limit, every), theirs), daemon=True
            )
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
        for pipe in self.pipes:
            if not pipe.poll(120) or pipe.recv() != "open":
                raise RuntimeError("a reader process did not open its streams")

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def finish(self, published: int, timeout: float) -> dict[str, int]:
        """Read until every stream has the ``published`` events (or ended, or ``timeout``)."""
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            pipe.send((published, deadline))
        total = {"streams": 0, "complete": 0, "eof": 0, "least": published}
        for pipe in self.pipes:
            if not pipe.poll(timeout + 30):
                raise RuntimeError("a reader process did not answer")
            report = pipe.recv()
            for name in ("streams", "complete", "eof"):
                total[name] += report[name]
            total["least"] = min(total["least"], report["least"])
        return total

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send("close")
            except OSError:
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
