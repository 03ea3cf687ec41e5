"""The FastAPI peer: FastAPI's own SSE (``fastapi.sse``, 0.135+) on uvicorn.

Runs in the benchmark environment (``benchmarks/.venv``), one process::

    benchmarks/.venv/bin/uvicorn benchmarks.peer_fastapi:app --loop uvloop --http httptools

Written as FastAPI's tutorial and reference show: ``async def`` path
operations that ``yield``, with ``response_class=EventSourceResponse``, so
that FastAPI frames the events, adds its 15 s ``: ping`` keep-alive and the
``Cache-Control``/``X-Accel-Buffering`` headers, and Starlette's
``StreamingResponse`` watches for the client's close. The event data is
text, not JSON, so each item is a ``ServerSentEvent(raw_data=...)``, the
form FastAPI documents for pre-formatted text (a plain ``str`` goes on the
wire JSON-quoted). ``BENCH_FASTAPI_ITEMS`` picks another documented form,
to measure what the choice costs (docs/benchmarks.md, "FastAPI"):

* ``raw`` (default): ``ServerSentEvent(raw_data=text)``;
* ``str``: the plain ``str`` with its type declared (``AsyncIterable[str]``),
  which FastAPI validates and JSON-encodes with pydantic (``data: "..."``;
  the load client reads a JSON string's text);
* ``sync``: ``/idle`` and ``/events`` as plain ``def`` generators on a
  ``queue.Queue``, which FastAPI iterates in anyio's thread pool, as its
  docs allow for blocking code.

The pub/sub (an ``asyncio.Queue`` per subscriber), the publish and probe
endpoints are the sse-starlette peer's (:mod:`peer_starlette`), mounted as
they are: only the event streams differ between the two peers.
"""

from __future__ import annotations

import asyncio
import os
import queue
import time
from collections.abc import AsyncIterable, Iterable

from fastapi import FastAPI
from fastapi.sse import EventSourceResponse, ServerSentEvent

from benchmarks import payload, peer_starlette

ITEMS = os.environ.get("BENCH_FASTAPI_ITEMS", "raw")
if ITEMS not in ("raw", "str", "sync"):
    raise SystemExit(f"BENCH_FASTAPI_ITEMS={ITEMS!r}: use raw, str or sync")

FINALS = peer_starlette.FINALS
SUBSCRIBERS = peer_starlette.SUBSCRIBERS

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
for path, endpoint, methods in (
    ("/bench/publish", peer_starlette.bench_publish, ["POST"]),
    ("/bench/subscribers", peer_starlette.bench_subscribers, ["GET"]),
    ("/pid", peer_starlette.pid, ["GET"]),
    ("/finals", peer_starlette.finals, ["GET"]),
):
    app.add_route(path, endpoint, methods=methods)

if ITEMS == "str":
    # FastAPI reads the item type from the return annotation.
    Item = str

    def event(data: str) -> Item:
        return data

else:
    Item = ServerSentEvent  # type: ignore[misc]

    def event(data: str) -> Item:
        return ServerSentEvent(raw_data=data)


sse = {"response_class": EventSourceResponse}


@app.get("/held", **sse)
async def held(id: str, period: float = 30) -> AsyncIterable[Item]:
    try:
        yield event("probe")
        while True:
            await asyncio.sleep(period)
            yield event("tick")
    finally:
        FINALS[id] = time.time()


@app.get("/blocked", **sse)
async def blocked(seconds: float = 10) -> AsyncIterable[Item]:
    await asyncio.sleep(seconds)
    yield event("late")
    await asyncio.sleep(3600)


@app.get("/burst", **sse)
async def burst() -> AsyncIterable[Item]:
    # No await of its own: FastAPI's SSE path awaits at every event (a
    # one-item buffer and a checkpoint), which also lets a close cancel it.
    for data in payload.burst():
        yield event(data)


if ITEMS != "sync":

    @app.get("/idle", **sse)
    async def idle() -> AsyncIterable[Item]:
        inbox: asyncio.Queue[str] = asyncio.Queue()
        SUBSCRIBERS.add(inbox)
        try:
            yield event("probe")
            while True:
                yield event(await inbox.get())
        finally:
            SUBSCRIBERS.discard(inbox)

    @app.get("/events", **sse)
    async def events() -> AsyncIterable[Item]:
        inbox: asyncio.Queue[str] = asyncio.Queue()
        SUBSCRIBERS.add(inbox)
        try:
            while True:
                yield event(await inbox.get())
        finally:
            SUBSCRIBERS.discard(inbox)

else:
    # A blocking generator: each next() runs in anyio's thread pool (40
    # threads by default), and the publisher hands each event to a thread.
    def _sync_subscriber(probe: bool) -> Iterable[ServerSentEvent]:
        inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
        SUBSCRIBERS.add(inbox)  # type: ignore[arg-type]
        try:
            if probe:
                yield ServerSentEvent(raw_data="probe")
            while True:
                yield ServerSentEvent(raw_data=inbox.get())
        finally:
            SUBSCRIBERS.discard(inbox)  # type: ignore[arg-type]

    @app.get("/idle", **sse)
    def idle_sync() -> Iterable[ServerSentEvent]:
        yield from _sync_subscriber(probe=True)

    @app.get("/events", **sse)
    def events_sync() -> Iterable[ServerSentEvent]:
        yield from _sync_subscriber(probe=False)
