"""The sse-starlette peer: Starlette + ``EventSourceResponse`` on uvicorn.

Runs in the benchmark environment (``benchmarks/.venv``), one process::

    benchmarks/.venv/bin/uvicorn benchmarks.peer_starlette:app --loop uvloop --http httptools

Written as its documentation shows: async generators that yield dicts,
sse-starlette's default 15 s ping, its own disconnect listening. Its pub/sub
is the usual one, an ``asyncio.Queue`` per subscriber that the publisher
puts each event into. The endpoints are those of :mod:`instrument`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from benchmarks import payload

FINALS: dict[str, float] = {}
SUBSCRIBERS: set[asyncio.Queue[str]] = set()
_tasks: set[asyncio.Task[None]] = set()


async def _subscriber(probe: bool) -> AsyncIterator[dict[str, str]]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    SUBSCRIBERS.add(queue)
    try:
        if probe:
            yield {"data": "probe"}
        while True:
            yield {"data": await queue.get()}
    finally:
        SUBSCRIBERS.discard(queue)


async def idle(request: Request) -> Response:
    return EventSourceResponse(_subscriber(probe=True))


async def events(request: Request) -> Response:
    return EventSourceResponse(_subscriber(probe=False))


async def held(request: Request) -> Response:
    stream_id = request.query_params["id"]
    period = float(request.query_params.get("period", "30"))

    async def producer() -> AsyncIterator[dict[str, str]]:
        try:
            yield {"data": "probe"}
            while True:
                await asyncio.sleep(period)
                yield {"data": "tick"}
        finally:
            FINALS[stream_id] = time.time()

    return EventSourceResponse(producer())


async def blocked(request: Request) -> Response:
    seconds = float(request.query_params.get("seconds", "10"))

    async def producer() -> AsyncIterator[dict[str, str]]:
        await asyncio.sleep(seconds)
        yield {"data": "late"}
        await asyncio.sleep(3600)

    return EventSourceResponse(producer())


async def burst(request: Request) -> Response:
    async def producer() -> AsyncIterator[dict[str, str]]:
        for number, data in enumerate(payload.burst()):
            yield {"data": data}
            if number % 1000 == 999:
                # uvicorn's send() returns at once once the client has gone,
                # so a producer that never awaits would never let the
                # disconnect listener run, and would run on forever.
                await asyncio.sleep(0)

    return EventSourceResponse(producer())


def _publish(data: str) -> None:
    for queue in tuple(SUBSCRIBERS):
        queue.put_nowait(data)


async def bench_publish(request: Request) -> Response:
    count = int(request.query_params.get("count", "1"))
    interval = float(request.query_params.get("interval", "0"))
    tag = request.query_params.get("tag", "x")
    if not interval:
        for _ in range(count):
            _publish(payload.stamped(tag))
        return JSONResponse({"published": count})

    async def steady() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for number in range(count):
            delay = start + number * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            _publish(payload.stamped(tag))

    task = asyncio.create_task(steady())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return JSONResponse({"published": 0, "scheduled": count})


async def bench_subscribers(request: Request) -> Response:
    return JSONResponse({"subscribers": len(SUBSCRIBERS)})


async def pid(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid(), "library": None})


async def finals(request: Request) -> Response:
    prefix = request.query_params.get("prefix", "")
    return JSONResponse({k: v for k, v in FINALS.items() if k.startswith(prefix)})


app = Starlette(
    routes=[
        Route("/idle", idle),
        Route("/events", events),
        Route("/held", held),
        Route("/blocked", blocked),
        Route("/burst", burst),
        Route("/bench/publish", bench_publish, methods=["POST"]),
        Route("/bench/subscribers", bench_subscribers),
        Route("/pid", pid),
        Route("/finals", finals),
    ]
)
