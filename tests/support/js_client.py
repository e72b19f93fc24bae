"""The browser client (progress-client.js) under Node: a scripted server speaking the documented protocol, and how
to start Node with a script of the test's.

The server is a small Starlette app whose every connection plays the next step list of a script, so reconnects,
refusals, fallbacks and duplicates happen exactly when a test wants them. Node 20 needs ``--experimental-websocket``
for its global WebSocket; SSE is read with fetch, which Node has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

STATIC = Path(__file__).resolve().parents[2] / "celery_progress_ws" / "web" / "static"
CLIENT_JS = STATIC / "progress-client.js"
CLIENT_DTS = STATIC / "progress-client.d.ts"
NODE = shutil.which("node")
CLIENTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
MINE = "me"
"""The script key of the user's feed."""

FAST = {"initialBackoffMs": 5, "maxBackoffMs": 20}
"""Reconnect delays short enough for tests."""

Step = tuple[Any, ...]


@dataclass
class ScriptedServer:
    """Plays one step list per incoming connection and records how each connection asked to resume; the user's feed
    (``/me/ws``, ``/me/events``) plays the scripts of ``MINE``, and ``/me/operations`` answers from ``pages``."""

    base_url: str = ""
    scripts: dict[str, list[list[Step]]] = field(default_factory=dict)
    connections: list[tuple[str, str | None]] = field(default_factory=list)
    pages: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    listings: list[list[tuple[str, str]]] = field(default_factory=list)

    def next_steps(self, operation_id: str, transport: str, last_event_id: str | None) -> list[Step]:
        self.connections.append((transport, last_event_id))
        remaining = self.scripts.get(operation_id, [])
        return remaining.pop(0) if remaining else [("refuse", "script exhausted")]

    def app(self) -> Starlette:
        async def websocket_endpoint(websocket: WebSocket) -> None:
            name = websocket.path_params.get("operation_id", MINE)
            steps = self.next_steps(name, "websocket", websocket.query_params.get("last_event_id"))
            if steps[0][0] == "reject":
                await websocket.close(code=1008)  # before accept: the handshake fails with HTTP 403
                return
            await websocket.accept()
            for step in steps:
                if step[0] == "send":
                    await websocket.send_text(json.dumps(step[1]))
                elif step[0] == "close":
                    await websocket.close(code=step[1], reason=step[2])
                    return
                elif step[0] == "refuse":
                    await websocket.close(code=1008, reason=step[1])
                    return
                elif step[0] == "hold":
                    try:
                        while True:
                            await websocket.receive_text()
                    except WebSocketDisconnect:
                        return

        async def sse_endpoint(request: Request) -> Response:
            last_event_id = request.query_params.get("last_event_id")
            if request.headers.get("last-event-id") != last_event_id:  # sent both ways on the same origin
                return JSONResponse({"detail": "Last-Event-ID header differs from last_event_id"}, status_code=400)
            steps = self.next_steps(request.path_params.get("operation_id", MINE), "sse", last_event_id)
            if steps[0][0] == "finished":
                return Response(status_code=204)
            if steps[0][0] in ("http", "refuse", "reject"):
                code, detail = (steps[0][1], steps[0][2]) if steps[0][0] == "http" else (403, "refused")
                return JSONResponse({"detail": detail}, status_code=code)

            async def body() -> AsyncIterable[str]:
                for step in steps:
                    if step[0] == "send":
                        message = step[1]
                        text = f"id: {message.get('id', '')}\nevent: {message['type']}\ndata: {json.dumps(message)}\n\n"
                        yield text.replace("\n", step[2]) if len(step) > 2 else text
                    elif step[0] == "raw":
                        yield step[1]

            return StreamingResponse(body(), media_type="text/event-stream")

        async def list_endpoint(request: Request) -> Response:
            self.listings.append(list(request.query_params.multi_items()))
            code, body = self.pages.pop(0) if self.pages else (403, {"detail": "script exhausted"})
            return JSONResponse(body, status_code=code)

        return Starlette(
            routes=[
                WebSocketRoute("/progress/operations/{operation_id}/ws", websocket_endpoint),
                Route("/progress/operations/{operation_id}/events", sse_endpoint),
                WebSocketRoute("/progress/me/ws", websocket_endpoint),
                Route("/progress/me/events", sse_endpoint),
                Route("/progress/me/operations", list_endpoint),
            ]
        )


def node_with_websocket() -> list[str]:
    """``node`` with the flag that gives it a global WebSocket, or a loud skip when Node cannot run the client."""
    if NODE is None:
        pytest.skip("SKIPPED LOUDLY: `node` is not on PATH, so the browser client cannot be exercised")
    for flags in ([], ["--experimental-websocket"]):
        probe = subprocess.run(
            [NODE, *flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            return [NODE, *flags]
    pytest.skip("SKIPPED LOUDLY: this Node has no WebSocket (needs Node >= 20 with --experimental-websocket)")


@contextlib.asynccontextmanager
async def serving(scripted: ScriptedServer) -> AsyncIterator[ScriptedServer]:
    """The scripted server on a free port, listening before the block starts (no start-up wait needed)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    scripted.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/progress"
    config = uvicorn.Config(scripted.app(), ws="websockets-sansio", lifespan="off", log_level="warning")
    runner = uvicorn.Server(config)
    task = asyncio.create_task(runner.serve(sockets=[sock]))
    try:
        yield scripted
    finally:
        runner.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def start_node(node_command: list[str], script: Path, config: dict[str, Any]) -> Any:
    """Run ``script`` under Node with the client module's URL and ``config`` (JSON) as arguments; stdout and stderr
    are pipes."""
    return await asyncio.create_subprocess_exec(
        *node_command,
        str(script),
        CLIENT_JS.as_uri(),
        json.dumps(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def of(records: list[dict[str, Any]], *callbacks: str) -> list[dict[str, Any]]:
    """The records of these callbacks, in order."""
    return [record for record in records if record["cb"] in callbacks]


DOC_PREAMBLE = """
const elements = {};
const element = () => ({ value: 0, textContent: "", lines: [], append(text) { this.lines.push(text); } });
globalThis.document = { querySelector: (selector) => (elements[selector] ??= element()) };
globalThis.location = new URL(process.env.PAGE_URL);
process.on("exit", () => process.stdout.write(JSON.stringify(elements)));
"""


def docs_example(*, mine: bool) -> str:
    """The ```js example of docs/clients.md that follows one operation, or (``mine``) the one of the user's own."""
    blocks = re.findall(r"^```js\n(.*?)^```", CLIENTS_DOC.read_text(), re.DOTALL | re.MULTILINE)
    [block] = [block for block in blocks if ("subscribeMine(" in block) == mine]
    return block


async def run_docs_example(node_command: list[str], tmp_path: Path, example: str, page_url: str) -> dict[str, Any]:
    """Run a docs example under Node as a page at ``page_url`` with a stub DOM; return the stub elements at exit."""
    page = tmp_path / "page.mjs"
    page.write_text(DOC_PREAMBLE + example.replace('"/progress/client.js"', json.dumps(CLIENT_JS.as_uri())))
    process = await asyncio.create_subprocess_exec(
        *node_command,
        str(page),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PAGE_URL": page_url},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    return dict(json.loads(stdout))
