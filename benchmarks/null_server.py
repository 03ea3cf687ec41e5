"""A server that does nothing but stream: the load client's ceiling.

Every connection gets the response headers, then the same ~50-byte event,
one chunk each, as fast as the socket takes them, from a buffer built once.
Whatever rate the client reads from it is the most it can measure.

Run: ``python benchmarks/null_server.py PORT`` (127.0.0.1; SIGTERM stops it).
It answers ``GET /pid`` with its pid, like the apps under benchmark.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys

EVENT = b"data: 1700000000.000000 0123456789abcdefghijklmn\n\n"
CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
BUFFER = CHUNK * (65536 // len(CHUNK))
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


class Conn:
    __slots__ = ("offset", "request", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.request = b""
        self.offset = -1  # -1: still reading the request


def serve(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    while running:
        for key, _ in selector.select(0.2):
            if key.data is None:
                sock, _ = listener.accept()
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, Conn(sock))
            else:
                _ready(selector, key.data)


def _ready(selector: selectors.BaseSelector, conn: Conn) -> None:
    try:
        if conn.offset < 0:
            data = conn.sock.recv(4096)
            if not data:
                raise ConnectionError
            conn.request += data
            if b"\r\n\r\n" not in conn.request:
                return
            if conn.request.startswith(b"GET /pid"):
                body = json.dumps(
                    {"pid": os.getpid(), "library": os.path.dirname(__file__)}
                ).encode()
                conn.sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )
                raise ConnectionError
            conn.sock.sendall(HEAD)
            conn.offset = 0
            selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        sent = conn.sock.send(memoryview(BUFFER)[conn.offset :])
        conn.offset = (conn.offset + sent) % len(BUFFER)
    except BlockingIOError:
        return
    except OSError:  # the client left, or asked for /pid
        selector.unregister(conn.sock)
        conn.sock.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
