"""Real servers and real clients for the web tests: uvicorn in a thread or a subprocess, websockets helpers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from starlette.types import ASGIApp
from websockets.asyncio.client import ClientConnection

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web import ProgressManager
from devtools.processes import OwnedProcess, free_port
from tests.support.serverapp import build_app

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
SERVER_APP = "tests.support.serverapp:create_app"


class ThreadServer:
    """A uvicorn server running an app in a thread of its own (its own event loop), on a free port.

    ``options`` override uvicorn.Config arguments (``ws_max_size``, ``proxy_headers``...).
    """

    def __init__(self, manager: ProgressManager, app: ASGIApp | None = None, **options: Any) -> None:
        self.manager = manager
        self.port = free_port()
        config = uvicorn.Config(
            build_app(manager) if app is None else app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            loop="asyncio",
            **{"timeout_graceful_shutdown": 5, **options},
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the server's event loop (the manager lives there) and await its result."""
        assert self.loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(20)


class ProcessServer:
    """A uvicorn subprocess serving ``SERVER_APP`` with settings from its environment."""

    def __init__(self, settings: ProgressSettings, *, stderr: int | None = None) -> None:
        """``stderr=subprocess.PIPE`` keeps what the server logs for the test to read."""
        self.port = free_port()
        env = {
            **os.environ,
            "CELERY_PROGRESS_WS_REDIS_URL": settings.redis_url,
            "CELERY_PROGRESS_WS_KEY_PREFIX": settings.key_prefix,
            "PYTHONPATH": str(ROOT),
        }
        command = [sys.executable, "-m", "uvicorn", SERVER_APP, "--factory", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--log-level", "warning"]
        self.owned = OwnedProcess(command, env=env, cwd=ROOT, stderr=stderr)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The uvicorn process itself, for tests that signal, kill or wait for it directly."""
        return self.owned.popen

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        self.owned.wait_for_port(self.port, timeout)

    def stop(self) -> None:
        self.owned.stop(15)


def ws_url(server: ThreadServer | ProcessServer, operation_id: str, user: str = "alice", **query: str) -> str:
    extra = "".join(f"&{key}={value}" for key, value in query.items())
    return f"{server.ws}/progress/operations/{operation_id}/ws?user={user}{extra}"


async def receive_json(websocket: ClientConnection, within: float = 10) -> dict[str, Any]:
    """The next message as JSON, failing the test if none arrives in time."""
    async with asyncio.timeout(within):
        message = await websocket.recv()
    result: dict[str, Any] = json.loads(message)
    return result


async def receive_until_closed(websocket: ClientConnection, within: float = 15) -> list[dict[str, Any]]:
    """Every message until the server closes the socket."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        async for message in websocket:
            messages.append(json.loads(message))
    return messages


class SseEvent(dict[str, str]):
    """One Server-Sent Event: its ``id`` (if any), ``event`` and ``data`` fields."""


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[SseEvent | str]:
    """Parse an event stream; yields events, and ``":"``-comments as plain strings."""
    event = SseEvent()
    async for line in lines:
        if line == "":
            if event:
                yield event
            event = SseEvent()
        elif line.startswith(":"):
            yield line
        else:
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


async def eventually(condition: Callable[[], bool], within: float = 5) -> None:
    """Wait until ``condition()`` holds: for server-side state (in another thread) that offers no event to await."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - server-side state in another thread has no event to await
            await asyncio.sleep(0.01)


def new_operation() -> str:
    """An operation id of this test's own (a fresh uuid), valid in keys and URLs."""
    return f"op-{uuid.uuid4().hex[:12]}"
