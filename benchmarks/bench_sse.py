"""SSE delivery: our event-stream response beside sse-starlette's ``EventSourceResponse`` on the same outbox.

Each variant is a uvicorn process serving the progress router; its events route differs only in the response that
drains a session's outbox: ``ours`` (``web/_sse.py``), ``sse-starlette`` (its ``ServerSentEvent`` framing per
connection, ``send_timeout`` and ping on) and ``sse-starlette, our frames`` (our shared pre-built frames as bytes).
M raw clients watch one operation; a publisher writes N entries as fast as it can; a round ends when every client
has the last one. Rounds alternate between the variants; the table gives medians of delivery time and server CPU.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sse.py --clients 200 --entries 500 --rounds 5

Needs ``sse-starlette>=3`` importable (it is not a dependency: ``pip install 'sse-starlette>=3'`` to compare).
Redis: ``CELERY_PROGRESS_WS_REDIS_URL`` or redis://127.0.0.1:6379/0; keys go under a unique prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection
from starlette.responses import Response

from benchmarks._children import ROOT
from benchmarks._probes import cpu_seconds, delete_prefix
from benchmarks._protocol import install_watchdog
from benchmarks._report import median
from celery_progress_ws import ProgressSettings
from celery_progress_ws._core.streams import Topic, TopicKind
from celery_progress_ws.web import ProgressManager, create_progress_router
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from celery_progress_ws.web._session import Session
from devtools.processes import OwnedProcess, free_port, stop_all
from devtools.servers import resolve_redis

VARIANTS = ("ours", "sse-starlette", "sse-starlette, our frames")
EVENTS_PATH = "/operations/{operation_id}/events"


# -- server side ------------------------------------------------------------------------------------------------


def user_id(connection: HTTPConnection) -> str:
    return connection.headers.get("x-user", "anonymous")


async def allow(user: str, name: str) -> bool:
    return True


def build_app(variant: str) -> FastAPI:
    """The progress router; for the sse-starlette variants, its events route answered by ``EventSourceResponse``."""
    settings = ProgressSettings(max_connections_per_user=100_000, max_total_connections=100_000)
    manager = ProgressManager(settings=settings)
    app = FastAPI(lifespan=manager.lifespan)
    if variant != "ours":
        from sse_starlette import EventSourceResponse, ServerSentEvent

        prebuilt = variant == "sse-starlette, our frames"

        @app.get("/progress" + EVENTS_PATH)
        async def events(operation_id: str, connection: HTTPConnection) -> Response:
            topic = Topic(TopicKind.OPERATION, operation_id)
            session = await manager._gateway.open_stream(topic, user_id(connection), None)

            async def frames(session: Session) -> AsyncIterator[Any]:
                while (item := await session.outbox.get()) is not None:
                    yield item.sse if prebuilt else ServerSentEvent(item.text, event=item.type, id=item.entry_id)

            return EventSourceResponse(
                frames(session),
                ping=settings.heartbeat_seconds,
                send_timeout=settings.send_timeout_seconds,
                background=BackgroundTask(manager._gateway.end, session),
            )

    app.include_router(create_progress_router(manager, get_user_id=user_id, authorize=allow), prefix="/progress")
    return app


def serve(variant: str, port: int) -> None:
    import uvicorn

    install_watchdog()
    uvicorn.run(build_app(variant), host="127.0.0.1", port=port, log_level="warning")


# -- client side ------------------------------------------------------------------------------------------------


class Client:
    """A raw event-stream reader that counts the entries it has received."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = 0
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        tail = b""
        while chunk := await self.reader.read(65536):
            data = tail + chunk
            self.received += data.count(b"\nid: ") + data.startswith(b"id: ")
            tail = data[-5:]
            self.changed.set()

    async def wait_for(self, count: int) -> None:
        while self.received < count:
            self.changed.clear()
            await self.changed.wait()

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


async def open_clients(port: int, operation: str, count: int) -> list[Client]:
    clients = []
    path = EVENTS_PATH.format(operation_id=operation)
    for number in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /progress{path} HTTP/1.1\r\nHost: bench\r\nx-user: user-{number}\r\n\r\n".encode())
        clients.append(Client(reader, writer))
    return clients


async def one_round(port: int, pid: int, publisher: AsyncProgressPublisher, clients: int, entries: int) -> list[float]:
    """Delivery seconds and server CPU seconds of ``entries`` entries to ``clients`` fresh clients."""
    operation = f"op-{uuid.uuid4().hex[:10]}"
    await publisher.publish(operation, "status_update", {"status": "started"})
    watchers = await open_clients(port, operation, clients)
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(watcher.wait_for(1) for watcher in watchers))
        cpu, start = cpu_seconds(pid), time.perf_counter()
        for number in range(entries):
            data = {"progress_percentage": number / entries * 100, "documents_processed": number, "total_documents": 1}
            await publisher.publish(operation, "chunking_progress", data)
        async with asyncio.timeout(120):
            await asyncio.gather(*(watcher.wait_for(entries + 1) for watcher in watchers))
        return [time.perf_counter() - start, cpu_seconds(pid) - cpu]
    finally:
        for watcher in watchers:
            watcher.close()


def compare(args: argparse.Namespace) -> None:
    """Start one server per variant, measure them round by round, print the table, stop them."""
    redis_url, private = resolve_redis()
    prefix = f"bench:sse-{uuid.uuid4().hex[:8]}:"
    env = {**os.environ, "CELERY_PROGRESS_WS_REDIS_URL": redis_url, "CELERY_PROGRESS_WS_KEY_PREFIX": prefix}
    servers: dict[str, tuple[int, OwnedProcess]] = {}
    try:
        for variant in VARIANTS:
            port = free_port()
            command = [sys.executable, "-m", "benchmarks.bench_sse", "--serve", variant, "--port", str(port)]
            servers[variant] = (port, OwnedProcess(command, env=env, cwd=ROOT))
        for port, process in servers.values():
            process.wait_for_port(port)
        results = asyncio.run(measure(args, servers, redis_url, prefix))
        print(f"{args.clients} clients x {args.entries} entries, median of {args.rounds} rounds")
        print(f"{'variant':<28}{'delivery s':>12}{'server CPU s':>14}{'CPU us/message':>16}")
        for variant, rounds in results.items():
            delivery, cpu = median([r[0] for r in rounds]), median([r[1] for r in rounds])
            per_message = cpu / (args.clients * args.entries) * 1e6
            print(f"{variant:<28}{delivery:>12.3f}{cpu:>14.3f}{per_message:>16.2f}")
    finally:
        stop_all([process for _, process in servers.values()], 15)
        delete_prefix(redis_url, prefix)
        if private is not None:
            private.stop()


async def measure(
    args: argparse.Namespace, servers: dict[str, tuple[int, OwnedProcess]], redis_url: str, prefix: str
) -> dict[str, list[list[float]]]:
    client = Redis.from_url(redis_url)
    try:
        publisher = AsyncProgressPublisher(client, ProgressSettings(redis_url=redis_url, key_prefix=prefix))
        results: dict[str, list[list[float]]] = {variant: [] for variant in servers}
        for _ in range(args.rounds):
            for variant, (port, process) in servers.items():
                results[variant].append(await one_round(port, process.pid, publisher, args.clients, args.entries))
        return results
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--entries", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
    else:
        compare(args)


if __name__ == "__main__":
    main()
