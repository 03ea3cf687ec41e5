"""The event data every app under benchmark sends, with no dependencies.

Shared by the Flask apps (through :mod:`instrument`) and the asyncio peer,
so every server sends the same bytes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

__all__ = ["burst", "stamped"]

_PAD = "abcdefghijklmnopqrstuvwxyz01"
_sequence = itertools.count(1)


def stamped(tag: str = "x") -> str:
    """One fan-out event's data: publish time, sequence number, a tag, padding.

    ``"1764095646.123456 00000001 s abcdefghijklmnopqrstuvwxyz01"``: 56
    characters, a 64-byte event on the wire. The load client takes the time
    from the first field (the clock is shared: same machine) and sorts
    events into the scenario's phases by the one-word tag.
    """
    return f"{time.time():.6f} {next(_sequence):08d} {tag} {_PAD}"


def burst() -> Iterator[str]:
    """S3: numbered ~50-byte events, endless (43 characters: 51 bytes on the wire)."""
    pad = _PAD + "2345678"
    for number in itertools.count():
        yield f"{number:08d} {pad}"
