"""Compressed streams: gzip or brotli, flushed after every chunk.

An ordinary compressor holds its output back until it has a block, which
would hold events back too. A stream's compressor is flushed after every
chunk it is given instead (zlib's ``Z_SYNC_FLUSH``, brotli's ``flush()``), so
every chunk on the wire ends on a byte the client can decode up to: each
event is dispatched the moment its chunk arrives. The dictionary spans the
whole stream, so the keys and markup that every event repeats shrink to a
few bytes each.

The stream's state machine (:class:`~flask_sse_stream._core.StreamCore`)
calls the compressor where bytes leave it, whoever writes them (the server's
handler, or the heartbeat loop, a subscription's sink or an inline producer
beside it), in the order they go out; a chunk that goes out only in part
has its compressed rest sent as it is, never compressed again.

Each stream has a compressor of its own (its dictionary is its own), whose
memory is the price: see :class:`Compression` and ``docs/benchmarks.md``.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, Protocol

from ._errors import ConfigError

__all__ = ["ENCODINGS", "Compression", "Compressor", "brotli_module", "choose"]

ENCODINGS: Final = ("gzip", "br")
"""The content codings a stream can be compressed with."""

GZIP_LEVEL: Final = 6
GZIP_WINDOW: Final = 12
GZIP_MEM_LEVEL: Final = 4
BR_QUALITY: Final = 5
BR_WINDOW: Final = 14


class Compressor(Protocol):
    """One stream's compressor, as the state machine uses it."""

    def flush(self, data: bytes) -> bytes:
        """Compress ``data`` and everything before it so the client can decode it all now."""

    def finish(self, data: bytes) -> bytes:
        """Compress ``data`` and end the compressed stream (its trailer)."""


def brotli_module() -> ModuleType | None:
    """The brotli binding installed (``Brotli``, else ``brotlicffi``), or ``None``."""
    for name in ("brotli", "brotlicffi"):
        try:
            return importlib.import_module(name)
        except ImportError:
            pass
    return None


class _Gzip:
    __slots__ = ("_obj",)

    def __init__(self, level: int, window: int, mem_level: int) -> None:
        # 16 + window bits: the gzip wrapper (RFC 1952), which every client
        # decodes; raw deflate ("deflate") is decoded differently by some.
        self._obj = zlib.compressobj(level, zlib.DEFLATED, 16 + window, mem_level)

    def flush(self, data: bytes) -> bytes:
        obj = self._obj
        return obj.compress(data) + obj.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes) -> bytes:
        obj = self._obj
        return obj.compress(data) + obj.flush(zlib.Z_FINISH)


class _Brotli:
    __slots__ = ("_obj", "_process")

    def __init__(self, module: ModuleType, quality: int, window: int) -> None:
        self._obj = obj = module.Compressor(mode=module.MODE_TEXT, quality=quality, lgwin=window)
        # Brotli calls it process(), brotlicffi compress().
        self._process = getattr(obj, "process", None) or obj.compress

    def flush(self, data: bytes) -> bytes:
        out: bytes = self._process(data) + self._obj.flush()
        return out

    def finish(self, data: bytes) -> bytes:
        out: bytes = self._process(data) + self._obj.finish()
        return out


@dataclass(frozen=True, slots=True)
class Compression:
    """How streams in one content coding are compressed; :meth:`new` makes a compressor.

    :param encoding: ``"gzip"`` or ``"br"``.
    :param level: gzip's level (1-9) or brotli's quality (0-11).
    :param window: base-2 logarithm of the window: 9-15 for gzip, 10-24 for
        brotli. The compressor keeps this much of the stream to refer back
        to; larger finds more repeats and costs more memory per stream.
    :param mem_level: gzip's ``memLevel`` (1-9): the size of its hash
        tables; ignored by brotli.
    """

    encoding: str
    level: int
    window: int
    mem_level: int = GZIP_MEM_LEVEL

    @classmethod
    def default(cls, encoding: str) -> Compression:
        """The measured defaults for ``encoding`` (``docs/benchmarks.md``)."""
        if encoding == "gzip":
            return cls("gzip", GZIP_LEVEL, GZIP_WINDOW, GZIP_MEM_LEVEL)
        return cls("br", BR_QUALITY, BR_WINDOW)

    def checked(self) -> Compression:
        """Refuse values the compressor would refuse, with what to do."""
        if self.encoding == "gzip":
            limits = {"level": (1, 9), "window": (9, 15), "mem_level": (1, 9)}
        elif self.encoding == "br":
            limits = {"level": (0, 11), "window": (10, 24), "mem_level": (1, 9)}
            if brotli_module() is None:
                raise ConfigError(
                    "br compression needs a brotli binding: pip install 'flask-sse-stream[brotli]'"
                )
        else:
            raise ConfigError(f"unknown compression {self.encoding!r}: use 'gzip' or 'br'")
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(
                    f"SSE_COMPRESSION_{name.upper()} must be a whole number from {low} to "
                    f"{high} for {self.encoding} (or None for the default), got {value!r}"
                )
        return self

    def new(self) -> Compressor:
        """A compressor for one stream."""
        if self.encoding == "gzip":
            return _Gzip(self.level, self.window, self.mem_level)
        module = brotli_module()
        assert module is not None  # checked()
        return _Brotli(module, self.level, self.window)


def encodings(name: str, value: Any) -> tuple[str, ...]:
    """Check a compression setting: ``None``, ``"gzip"``, ``"br"`` or a list in preference order."""
    if value is None:
        return ()
    names = (value,) if isinstance(value, str) else value
    if (
        not isinstance(names, Sequence)
        or not names
        or not all(isinstance(item, str) and item in ENCODINGS for item in names)
    ):
        raise ConfigError(
            f'{name} must be None, "gzip", "br", or a list of them in order of '
            f'preference such as ["br", "gzip"], got {value!r}'
        )
    return tuple(dict.fromkeys(names))


def choose(offered: Sequence[Compression], quality: Any) -> Compression | None:
    """The first of ``offered`` the client accepts, or ``None`` for the plain stream.

    :param quality: ``quality(coding)`` of the request's ``Accept-Encoding``
        (werkzeug's ``request.accept_encodings.quality``): 0 means refused.
    """
    for compression in offered:
        if quality(compression.encoding) > 0:
            return compression
    return None
