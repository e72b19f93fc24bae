"""The client fleet: one asyncio process holding many WebSocket connections and recording what they receive.

Each connection is a bare ``asyncio.Protocol`` driving the ``websockets`` sans-I/O ``ClientProtocol``: no task and
no queue per connection, so one process can follow thousands of sockets, and the receive time is taken as soon as
the bytes arrive (before any other connection's messages of the same loop turn are processed).

For every message carrying ``data.seq`` / ``data.sent_ns`` it records the latency (receive ``time.time_ns()`` minus
``sent_ns``), duplicates (a seq seen twice on one connection), out-of-order arrivals and, at the end, the missing seqs.

Protocol (JSON lines on stdin/stdout):
- ``{"cmd": "connect", "url": "ws://.../{op}/ws", "ops": [...], "per_op": n, "timeout": s}`` -> ``ready``
- ``{"cmd": "collect", "expected": {op: count}, "timeout": s}`` -> ``result`` once every connection has every
  expected seq or the timeout passed (the connections stay open)
- ``{"cmd": "close"}`` -> ``closed``; ``{"cmd": "quit"}`` exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from array import array
from collections import Counter
from typing import Any, cast

from websockets.client import ClientProtocol
from websockets.extensions.base import ClientExtensionFactory
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from benchmarks._protocol import emit, install_watchdog

CONNECT_CONCURRENCY = 50


class Cell:
    """What the connections of one ``connect`` command received."""

    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.latencies_ns = array("q")
        self.received = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.other: Counter[str] = Counter()
        self.close_codes: Counter[str] = Counter()
        self.first_ns = 0
        self.last_ns = 0
        self.expected: dict[str, int] | None = None
        self.incomplete = 0
        self.complete = asyncio.Event()

    def client_done(self) -> None:
        self.incomplete -= 1
        if self.incomplete <= 0:
            self.complete.set()


class Client(asyncio.Protocol):
    """One WebSocket connection following one operation."""

    def __init__(self, cell: Cell, op: str, url: str, extensions: list[ClientExtensionFactory] | None) -> None:
        self.cell = cell
        self.op = op
        self.ws = ClientProtocol(parse_uri(url), extensions=extensions)
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.seen = bytearray()
        self.unique = 0
        self.last_seq = -1
        self.done = False
        self.fragments: list[bytes] = []

    # asyncio.Protocol ------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.ws.send_request(self.ws.connect())
        self.flush()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.ws.receive_data(data)
        self.handle_events(now)

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self.handle_events(time.time_ns())
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"lost before the handshake: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)

    # WebSocket events ------------------------------------------------------------------------------------------

    def handle_events(self, now: int) -> None:
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if self.ws.handshake_exc is not None:
                    self.opened.set_exception(self.ws.handshake_exc)
                elif not self.opened.done():
                    self.opened.set_result(None)
            elif isinstance(event, Frame):
                self.handle_frame(event, now)
        self.flush()

    def handle_frame(self, frame: Frame, now: int) -> None:
        if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.CONT:
            data = frame.data if isinstance(frame.data, bytes) else bytes(frame.data)
            if not frame.fin:
                self.fragments.append(data)
                return
            payload = data
            if self.fragments:
                payload = b"".join([*self.fragments, payload])
                self.fragments.clear()
            self.on_message(payload, now)
        elif frame.opcode is Opcode.CLOSE:
            self.cell.close_codes[f"{self.ws.close_code} {self.ws.close_reason}".strip()] += 1

    def on_message(self, payload: bytes, now: int) -> None:
        cell = self.cell
        message = json.loads(payload)
        data = message.get("data")
        seq = data.get("seq") if isinstance(data, dict) else None
        if not isinstance(seq, int):
            cell.other[str(message.get("type"))] += 1
            return
        cell.received += 1
        cell.latencies_ns.append(now - int(data["sent_ns"]))
        if not cell.first_ns:
            cell.first_ns = now
        cell.last_ns = now
        seen = self.seen
        if seq >= len(seen):
            seen.extend(bytes(seq + 256 - len(seen)))
        if seen[seq]:
            cell.duplicates += 1
            return
        seen[seq] = 1
        self.unique += 1
        if seq < self.last_seq:
            cell.out_of_order += 1
        else:
            self.last_seq = seq
        if cell.expected is not None and not self.done:
            self.check_done()

    def check_done(self) -> bool:
        expected = self.cell.expected
        if not self.done and expected is not None and self.unique >= expected.get(self.op, 0):
            self.done = True
            self.cell.client_done()
        return self.done

    def missing(self, expected: int) -> int:
        return expected - sum(self.seen[:expected])

    def flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        with contextlib.suppress(Exception):
            self.ws.send_close(1000)
            self.flush()

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


def percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list, in milliseconds."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] / 1e6


class Fleet:
    def __init__(self, deflate: bool) -> None:
        self.cell = Cell()
        self.deflate = deflate

    async def connect(self, url: str, ops: list[str], per_op: int, wait: float) -> None:
        self.cell = cell = Cell()
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        errors: Counter[str] = Counter()
        started = time.monotonic()

        async def open_one(op: str) -> None:
            target = url.replace("{op}", op)
            wsuri = parse_uri(target)
            # None, not []: an empty list makes the client send an empty Sec-WebSocket-Extensions header.
            extensions: list[ClientExtensionFactory] | None = (
                [ClientPerMessageDeflateFactory(client_max_window_bits=True)] if self.deflate else None
            )
            async with gate:
                client: Client | None = None
                try:
                    _, client = await loop.create_connection(
                        lambda: Client(cell, op, target, extensions), wsuri.host, wsuri.port
                    )
                    await asyncio.wait_for(client.opened, wait)
                except Exception as exc:
                    errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    if client is not None:
                        client.abort()
                else:
                    cell.clients.append(client)

        await asyncio.gather(*(open_one(op) for op in ops for _ in range(per_op)))
        emit(
            event="ready",
            connected=len(cell.clients),
            failed=sum(errors.values()),
            errors=dict(errors),
            seconds=time.monotonic() - started,
        )

    async def collect(self, expected: dict[str, int], wait: float) -> None:
        cell = self.cell
        cell.expected = expected
        cell.incomplete = len(cell.clients)
        cell.complete.clear()
        for client in cell.clients:
            if client.done:
                cell.incomplete -= 1
            else:
                client.check_done()
        if cell.incomplete > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cell.complete.wait(), wait)
        ordered = sorted(cell.latencies_ns)
        expected_total = sum(expected.get(client.op, 0) for client in cell.clients)
        missing = sum(client.missing(expected.get(client.op, 0)) for client in cell.clients)
        span = (cell.last_ns - cell.first_ns) / 1e9 if cell.received > 1 else 0.0
        emit(
            event="result",
            connections=len(cell.clients),
            lost_connections=sum(1 for client in cell.clients if client.lost.done()),
            received=cell.received,
            expected=expected_total,
            missing=missing,
            duplicates=cell.duplicates,
            out_of_order=cell.out_of_order,
            other=dict(cell.other),
            close_codes=dict(cell.close_codes),
            p50_ms=percentile(ordered, 0.50),
            p99_ms=percentile(ordered, 0.99),
            max_ms=ordered[-1] / 1e6 if ordered else float("nan"),
            mean_ms=sum(ordered) / len(ordered) / 1e6 if ordered else float("nan"),
            first_ns=cell.first_ns,
            last_ns=cell.last_ns,
            span_s=span,
            timed_out=cell.incomplete > 0,
        )

    async def close(self) -> None:
        clients = self.cell.clients
        for client in clients:
            client.close()
        pending = [client.lost for client in clients if not client.lost.done()]
        if pending:
            await asyncio.wait(pending, timeout=5)
        for client in clients:
            client.abort()
        self.cell = Cell()
        emit(event="closed")


async def serve(deflate: bool) -> None:
    fleet = Fleet(deflate)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command: dict[str, Any] = json.loads(line)
        name = command["cmd"]
        if name == "quit":
            break
        if name == "connect":
            await fleet.connect(command["url"], command["ops"], int(command["per_op"]), float(command["timeout"]))
        elif name == "collect":
            await fleet.collect(command["expected"], float(command["timeout"]))
        elif name == "close":
            await fleet.close()
    for client in fleet.cell.clients:
        client.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate, as browsers do")
    args = parser.parse_args()
    install_watchdog()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.deflate))
    else:
        uvloop.run(serve(args.deflate))


if __name__ == "__main__":
    main()
