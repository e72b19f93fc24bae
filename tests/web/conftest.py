"""Web fixtures: real uvicorn servers on free ports (one with the cancel route), an async publisher and a raw client
on the test's Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from redis.asyncio import Redis

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web import ProgressManager
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from tests.support.harness import ThreadServer
from tests.support.js_client import ScriptedServer, node_with_websocket, serving
from tests.support.serverapp import build_app


@pytest.fixture
def web_settings(settings: ProgressSettings) -> ProgressSettings:
    """Test settings with a short heartbeat and backoff cap, so outages are noticed and repaired quickly."""
    return settings.model_copy(update={"heartbeat_seconds": 2.0, "reconnect_max_seconds": 0.5})


@pytest.fixture
def serve() -> Iterator[Callable[..., ThreadServer]]:
    """Start uvicorn for a manager built from the given settings; every server is stopped afterwards."""
    servers: list[ThreadServer] = []

    def start(settings: ProgressSettings, **overrides: Any) -> ThreadServer:
        manager = ProgressManager(settings=settings.model_copy(update=overrides) if overrides else settings)
        server = ThreadServer(manager)
        server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def server(serve: Callable[..., ThreadServer], web_settings: ProgressSettings) -> ThreadServer:
    """One uvicorn server on the test's Redis and key prefix."""
    return serve(web_settings)


@pytest.fixture
async def web_publisher(web_settings: ProgressSettings) -> AsyncIterator[AsyncProgressPublisher]:
    """An async publisher on its own client, writing through APPEND_SCRIPT like every writer."""
    client = Redis.from_url(web_settings.redis_url)
    try:
        yield AsyncProgressPublisher(client, web_settings)
    finally:
        await client.aclose()


@pytest.fixture
async def raw_redis(web_settings: ProgressSettings) -> AsyncIterator[Redis]:
    """An async client for writing entries by hand (malformed ones, for instance)."""
    client = Redis.from_url(web_settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def cancel_server(progress_worker: Celery, module_settings: ProgressSettings) -> Iterator[ThreadServer]:
    """A server whose router has the worker's app, so it offers the cancel route (threads pool: no terminate)."""
    manager = ProgressManager(settings=module_settings.model_copy(update={"cancel_terminate": False}))
    server = ThreadServer(manager, build_app(manager, celery_app=progress_worker))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def node_command() -> list[str]:
    """``node`` able to run the browser client (with a global WebSocket), or a loud skip."""
    return node_with_websocket()


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    """A scripted server for the browser client on a free port (tests/support/js_client.py)."""
    async with serving(ScriptedServer()) as server:
        yield server
