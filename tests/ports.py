"""A free port for a server a test starts: the one helper every test uses."""

from __future__ import annotations

import random
import socket
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on, below the kernel's range for outgoing connections.

    A port from ``bind(0)`` comes from that range: until the server binds
    it, any connection this machine makes may take it as its local port
    (seen: a Redis cluster node exited with "Address already in use" on its
    bus port while other tests ran). Below the range, only a listener can.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue  # a listener of its own there
            return port
    raise RuntimeError(f"no free port in {max(1024, low - 12_000)}-{low - 1}")
