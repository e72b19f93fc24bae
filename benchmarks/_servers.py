"""The web apps the benchmarks compare, each run in its own uvicorn process with the same WebSocket URL shape.

- ``ours``: ``celery_progress_ws.web`` mounted as its docs say, with the limits raised for the benchmark.
- ``floor``: one task running one ``XREAD BLOCK`` over every watched stream and sending each entry to the sockets.
- ``seed``: the seed's reading pattern, one consumer task per watched operation doing
  ``XREADGROUP ... COUNT 10 BLOCK 1000``, an ``XACK`` per entry, then ``sleep(0.1)``.
- ``xread-per-op``: one task and one blocked ``XREAD`` (one Redis connection) per watched operation.
- diagnostics, each the floor with one of ours' choices: ``floor-pubsub`` (live entries from one pub/sub
  connection) and ``floor-queued`` (a queue and a sender task per socket); ``ours-queued`` is ours with the direct
  send turned off (every message queued and sent by the connection's sender task, as before that fast path).

Usage (by the harness): ``python -m benchmarks._servers --kind floor --port 8123 --redis-url ... --prefix ...``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, cast

import uvicorn
from fastapi import FastAPI, WebSocket
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from benchmarks._protocol import WS_PATH, install_watchdog
from celery_progress_ws._core.codec import MESSAGE_FIELD
from celery_progress_ws._core.keys import KeySpace

logger = logging.getLogger("benchmarks.servers")

BASELINE_POOL_SIZE = 5000
"""redis-py's asyncio pool refuses more than 100 connections by default; the per-operation baselines need 1000+."""


def start_task(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A background task whose failure is logged at once (a baseline that stops reading must be noticed)."""
    task = asyncio.create_task(coroutine)
    task.add_done_callback(_log_failure)
    return task


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("reader task failed", exc_info=task.exception())


class Hub:
    """Sockets by operation; subclasses start reading an operation when it gains its first socket."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        self.redis = redis
        self.keys = keys
        self.sockets: dict[str, set[WebSocket]] = {}

    async def join(self, op: str, websocket: WebSocket) -> None:
        sockets = self.sockets.get(op)
        if sockets is None:
            self.sockets[op] = {websocket}
            await self.watch(op)
        else:
            sockets.add(websocket)

    async def leave(self, op: str, websocket: WebSocket) -> None:
        sockets = self.sockets.get(op)
        if sockets is None:
            return
        sockets.discard(websocket)
        if not sockets:
            del self.sockets[op]
            await self.unwatch(op)

    async def watch(self, op: str) -> None:
        raise NotImplementedError

    async def unwatch(self, op: str) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """The hub's own background loop, if it has one."""

    async def latest_id(self, stream: str) -> str:
        newest = await self.redis.xrevrange(stream, count=1)
        return str(newest[0][0]) if newest else "0-0"

    async def send_text(self, op: str, text: str) -> None:
        for websocket in tuple(self.sockets.get(op, ())):
            try:
                await websocket.send_text(text)
            except Exception:
                self.sockets.get(op, set()).discard(websocket)


StreamReply = list[tuple[str, list[tuple[str, dict[str, str]]]]]
"""What ``XREAD`` / ``XREADGROUP`` return with ``decode_responses=True`` (RESP2): streams and their entries."""


def entries_of(reply: Any) -> StreamReply:
    return cast(StreamReply, reply or [])


def delivered_text(entry_id: str, message: str) -> str:
    """``{"id": ..., <the entry's own fields>}`` without decoding the entry (the floor does nothing more)."""
    return '{"id":"' + entry_id + '",' + message[1:] if message.startswith("{") else message


class FloorHub(Hub):
    """One loop, one ``XREAD BLOCK`` over all watched streams, each entry sent to each socket in turn."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        super().__init__(redis, keys)
        self.positions: dict[str, str] = {}
        self.ops: dict[str, str] = {}
        self.changed = asyncio.Event()

    async def watch(self, op: str) -> None:
        stream = self.keys.stream(op)
        self.ops[stream] = op
        self.positions[stream] = await self.latest_id(stream)
        self.changed.set()

    async def unwatch(self, op: str) -> None:
        stream = self.keys.stream(op)
        self.positions.pop(stream, None)
        self.ops.pop(stream, None)

    async def run(self) -> None:
        while True:
            if not self.positions:
                self.changed.clear()
                await self.changed.wait()
                continue
            # A short block so that newly watched streams join the next call; entries still return at once.
            reply = await self.redis.xread(dict(self.positions), block=100)  # type: ignore[arg-type]
            for stream, entries in entries_of(reply):
                op = self.ops.get(stream)
                for entry_id, fields in entries:
                    if stream in self.positions:
                        self.positions[stream] = entry_id
                    if op is not None:
                        await self.send_text(op, delivered_text(entry_id, fields[MESSAGE_FIELD]))


class PerOperationXreadHub(Hub):
    """A task and a blocked ``XREAD`` (hence a Redis connection) per watched operation."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        super().__init__(redis, keys)
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def watch(self, op: str) -> None:
        self.tasks[op] = start_task(self.read(op))

    async def unwatch(self, op: str) -> None:
        task = self.tasks.pop(op, None)
        if task is not None:
            task.cancel()

    async def read(self, op: str) -> None:
        stream = self.keys.stream(op)
        position = await self.latest_id(stream)
        while True:
            reply = await self.redis.xread({stream: position}, block=0)
            for _, entries in entries_of(reply):
                for entry_id, fields in entries:
                    position = entry_id
                    await self.send_text(op, delivered_text(entry_id, fields[MESSAGE_FIELD]))


class SeedStyleHub(Hub):
    """The seed's pattern: a consumer group read per operation, ``COUNT 10 BLOCK 1000``, ack, ``sleep(0.1)``."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        super().__init__(redis, keys)
        self.group = f"bench-web-{uuid.uuid4().hex[:8]}"
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def watch(self, op: str) -> None:
        self.tasks[op] = start_task(self.consume(op))

    async def unwatch(self, op: str) -> None:
        task = self.tasks.pop(op, None)
        if task is not None:
            task.cancel()

    async def consume(self, op: str) -> None:
        stream = self.keys.stream(op)
        consumer = f"consumer-{op}"
        with contextlib.suppress(ResponseError):  # the group exists already
            await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
        while True:
            reply = await self.redis.xreadgroup(self.group, consumer, {stream: ">"}, count=10, block=1000)
            for _, entries in entries_of(reply):
                for entry_id, fields in entries:
                    message = {"id": entry_id, **json.loads(fields[MESSAGE_FIELD])}
                    for websocket in tuple(self.sockets.get(op, ())):
                        try:
                            await websocket.send_json(message)
                        except Exception:
                            self.sockets.get(op, set()).discard(websocket)
                    await self.redis.xack(stream, self.group, entry_id)
            await asyncio.sleep(0.1)


class PubSubFloorHub(Hub):
    """Diagnostic: the floor's direct sends, but live entries from one pub/sub connection (ours' transport)."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        super().__init__(redis, keys)
        self.pubsub = redis.pubsub()
        self.ops: dict[str, str] = {}
        self.subscribed = asyncio.Event()

    async def watch(self, op: str) -> None:
        channel = self.keys.live(op)
        self.ops[channel] = op
        await self.pubsub.subscribe(channel)
        self.subscribed.set()

    async def unwatch(self, op: str) -> None:
        channel = self.keys.live(op)
        self.ops.pop(channel, None)
        await self.pubsub.unsubscribe(channel)

    async def run(self) -> None:
        await self.subscribed.wait()  # get_message needs a subscription first
        while True:
            message = await self.pubsub.get_message(timeout=None)
            if message is None or message["type"] != "message":
                continue
            op = self.ops.get(message["channel"])
            entry_id, _, text = message["data"].partition(" ")
            if op is not None:
                await self.send_text(op, delivered_text(entry_id, text))


class QueuedFloorHub(FloorHub):
    """Diagnostic: the floor's XREAD loop, but each socket fed through its own queue and sender task (ours' shape)."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        super().__init__(redis, keys)
        self.queues: dict[WebSocket, asyncio.Queue[str]] = {}
        self.tasks: dict[WebSocket, asyncio.Task[None]] = {}

    async def join(self, op: str, websocket: WebSocket) -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self.queues[websocket] = queue
        self.tasks[websocket] = asyncio.create_task(self.sender(websocket, queue))
        await super().join(op, websocket)

    async def leave(self, op: str, websocket: WebSocket) -> None:
        self.queues.pop(websocket, None)
        task = self.tasks.pop(websocket, None)
        if task is not None:
            task.cancel()
        await super().leave(op, websocket)

    async def sender(self, websocket: WebSocket, queue: asyncio.Queue[str]) -> None:
        while True:
            await websocket.send_text(await queue.get())

    async def send_text(self, op: str, text: str) -> None:
        for websocket in tuple(self.sockets.get(op, ())):
            queue = self.queues.get(websocket)
            if queue is not None:
                queue.put_nowait(text)


HUBS: dict[str, Callable[[Redis, KeySpace], Hub]] = {
    "floor": FloorHub,
    "seed": SeedStyleHub,
    "xread-per-op": PerOperationXreadHub,
    "floor-pubsub": PubSubFloorHub,
    "floor-queued": QueuedFloorHub,
}


def baseline_app(kind: str, redis_url: str, prefix: str) -> FastAPI:
    # redis-py 8 reads with a 5 s socket timeout by default, which would break a blocked XREAD ... BLOCK 0.
    redis = Redis.from_url(redis_url, decode_responses=True, max_connections=BASELINE_POOL_SIZE, socket_timeout=None)
    hub = HUBS[kind](redis, KeySpace(prefix))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = start_task(hub.run())
        try:
            yield
        finally:
            runner.cancel()
            for task in getattr(hub, "tasks", {}).values():
                task.cancel()
            await redis.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.websocket(WS_PATH.replace("{op}", "{operation_id}"))
    async def operation_socket(websocket: WebSocket, operation_id: str) -> None:
        await websocket.accept()
        await hub.join(operation_id, websocket)
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            await hub.leave(operation_id, websocket)

    return app


def ours_app(redis_url: str, prefix: str, overrides: dict[str, Any]) -> FastAPI:
    from celery_progress_ws import ProgressSettings
    from celery_progress_ws.web import ProgressManager, create_progress_router

    limits = {"max_connections_per_user": 100_000, "max_total_connections": 100_000, "client_queue_size": 100_000}
    settings = ProgressSettings(redis_url=redis_url, key_prefix=prefix, **{**limits, **overrides})
    manager = ProgressManager(settings=settings)

    def bench_user() -> str:
        return "bench"

    def allow_all(user_id: str, operation_id: str) -> bool:
        return True

    app = FastAPI(lifespan=manager.lifespan)
    app.include_router(create_progress_router(manager, get_user_id=bench_user, authorize=allow_all), prefix="/progress")
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", required=True, choices=["ours", "ours-queued", *HUBS])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--settings", default="{}", help="JSON of ProgressSettings overrides (ours only)")
    args = parser.parse_args()
    install_watchdog()
    if args.kind in ("ours", "ours-queued"):
        if args.kind == "ours-queued":  # diagnostic: no direct sends, every message wakes the sender task
            from celery_progress_ws.web._session import Session

            queued = functools.partialmethod(Session.start_sender, direct=False)
            Session.start_sender = queued  # type: ignore[method-assign,assignment]
        app = ours_app(args.redis_url, args.prefix, json.loads(args.settings))
    else:
        app = baseline_app(args.kind, args.redis_url, args.prefix)

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
