"""The web half's metrics and health route, scraped from a real uvicorn server step by step."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web import ProgressManager
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from devtools.servers import PrivateRedis
from tests.support.harness import ROOT, ThreadServer, receive_json, sse_events, ws_url
from tests.support.metrics import Samples, parse, value
from tests.support.serverapp import build_app
from tests.web.test_slow_clients import count_until_closed, small_buffer_socket

pytestmark = pytest.mark.integration

Want = list[tuple[str, dict[str, str], float]]


@pytest.fixture
def metered() -> Iterator[Callable[..., ThreadServer]]:
    """Start uvicorn for a manager with a registry of its own, serving ``/progress/metrics``."""
    servers: list[ThreadServer] = []

    def start(settings: ProgressSettings, **overrides: Any) -> ThreadServer:
        manager = ProgressManager(settings=settings.model_copy(update=overrides), metrics_registry=CollectorRegistry())
        server = ThreadServer(manager, build_app(manager, metrics=True))
        server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


async def scraped(server: ThreadServer, want: Want, within: float = 10) -> Samples:
    """Scrape ``/progress/metrics`` until every wanted sample has its value; fail with what was seen otherwise."""
    async with httpx.AsyncClient() as client:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            samples = parse((await client.get(f"{server.http}/progress/metrics")).text)
            seen = [(name, labels, value(samples, name, **labels)) for name, labels, _ in want]
            if seen == want or loop.time() > deadline:
                assert seen == want
                return samples
            await asyncio.sleep(0.02)


def connections(websocket_operations: int = 0, sse_operations: int = 0, websocket_channels: int = 0) -> Want:
    return [
        ("connections", {"transport": "websocket", "kind": "operation"}, websocket_operations),
        ("connections", {"transport": "sse", "kind": "operation"}, sse_operations),
        ("connections", {"transport": "websocket", "kind": "channel"}, websocket_channels),
        ("connections", {"transport": "sse", "kind": "channel"}, 0),
    ]


def refused(**counts: int) -> Want:
    reasons = ("unauthorized", "user_limit", "server_limit", "invalid", "origin")
    return [("connections_refused_total", {"reason": reason}, counts.get(reason, 0)) for reason in reasons]


def delivered(websocket: int, sse: int) -> Want:
    return [
        ("messages_delivered_total", {"transport": "websocket"}, websocket),
        ("messages_delivered_total", {"transport": "sse"}, sse),
    ]


async def test_scrapes_follow_connections_refusals_and_deliveries(
    metered: Callable[..., ThreadServer], web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """Opening, refusing (each reason) and closing sockets and delivering entries change exactly their samples."""
    server = metered(web_settings, max_connections_per_user=2, max_total_connections=3)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    await scraped(server, connections() + refused() + delivered(0, 0))
    first = await web_publisher.publish(operation, "status_update", {"status": "started"})

    async with connect(ws_url(server, operation)) as alice, httpx.AsyncClient(timeout=10) as client:
        assert (await receive_json(alice))["id"] == first  # history read: the live channel is subscribed
        second = await web_publisher.publish(operation, "chunking_progress", {"documents_processed": 1})
        assert (await receive_json(alice))["id"] == second
        await scraped(
            server,
            [*connections(websocket_operations=1), *delivered(2, 0), ("delivery_lag_seconds_count", {}, 1)],
        )
        events_url = f"{server.http}/progress/operations/{operation}/events"
        async with client.stream("GET", events_url, headers={"x-user": "alice"}) as stream:
            events = sse_events(stream.aiter_lines())
            assert [(await anext(events))["id"] for _ in range(2)] == [first, second]
            await scraped(server, connections(websocket_operations=1, sse_operations=1) + delivered(2, 2))

            invalid, forbidden = ws_url(server, "ok", last_event_id="abc"), ws_url(server, "forbidden-x")
            for url in (invalid, forbidden, ws_url(server, operation)):  # the last one: alice's third connection
                async with connect(url) as refused_socket:
                    await refused_socket.wait_closed()
                    assert refused_socket.close_code == 1008
            await scraped(server, refused(invalid=1, unauthorized=1, user_limit=1))
            with pytest.raises(InvalidStatus):
                await connect(ws_url(server, operation, user="bob"), origin=Origin("http://evil.example"))
            async with connect(f"{server.ws}/progress/channels/news/ws?user=bob"):
                await scraped(server, connections(1, 1, 1))
                async with connect(ws_url(server, operation, user="carol")) as carol:
                    await carol.wait_closed()
                    assert carol.close_reason == "Server connection limit exceeded"
                await scraped(server, refused(invalid=1, unauthorized=1, user_limit=1, origin=1, server_limit=1))
            await scraped(server, connections(1, 1, 0))
        await scraped(server, connections(websocket_operations=1))
    await scraped(server, connections() + delivered(2, 2))


async def test_slow_client_close_and_history_gap_are_counted(
    metered: Callable[..., ThreadServer], web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """A client closed as too slow counts once; a resume from an id the stream never had counts one gap."""
    server = metered(web_settings, client_queue_size=16)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    first = await web_publisher.publish(operation, "status_update", {"status": "started"})
    slow_url = ws_url(server, operation, user="slow")
    async with connect(slow_url, sock=small_buffer_socket(server.port), compression=None, max_queue=1) as slow:
        assert (await receive_json(slow))["id"] == first
        for number in range(250):
            data = {"documents_processed": number, "blob": os.urandom(20_000).hex()}
            await web_publisher.publish(operation, "chunking_progress", data)
        await count_until_closed(slow)
        assert slow.close_code == 1013
    await scraped(server, [("slow_client_closes_total", {}, 1), ("history_gaps_total", {"reason": "trimmed"}, 0)])

    async with connect(ws_url(server, operation, last_event_id="99999999999999-0")) as resumed:
        gap = await receive_json(resumed)
        assert (gap["type"], gap["data"]["reason"]) == ("history_gap", "ahead_of_stream")
    await scraped(server, [("history_gaps_total", {"reason": "ahead_of_stream"}, 1)])


async def test_health_is_503_while_redis_is_down_and_the_metrics_say_so(
    metered: Callable[..., ThreadServer], web_settings: ProgressSettings, private_redis: PrivateRedis
) -> None:
    """/health answers 200 with Redis, 503 degraded without it, 200 again after; redis_up and reconnects follow."""
    server = metered(web_settings, redis_url=private_redis.url)
    async with httpx.AsyncClient(timeout=10) as client:
        health = await client.get(f"{server.http}/progress/health")
        assert (health.status_code, health.json()["status"]) == (200, "ok")
        await scraped(server, [("redis_up", {"half": "web"}, 1), ("redis_reconnects_total", {"half": "web"}, 0)])

        private_redis.stop()
        await scraped(server, [("redis_up", {"half": "web"}, 0)])
        health = await client.get(f"{server.http}/progress/health")
        assert (health.status_code, health.json()["status"]) == (503, "degraded")

        private_redis.start()
        await scraped(server, [("redis_up", {"half": "web"}, 1), ("redis_reconnects_total", {"half": "web"}, 1)])
        health = await client.get(f"{server.http}/progress/health", headers={"origin": "http://evil.example"})
        assert (health.status_code, health.json()["status"]) == (200, "ok")  # no user, no origin check


NO_EXTRA_APP = """
import sys
sys.modules["prometheus_client"] = None  # as if the metrics extra were not installed
from fastapi.testclient import TestClient
from celery_progress_ws import ProgressSettings
from celery_progress_ws._core import metrics
from celery_progress_ws.web import ProgressManager
from tests.support.serverapp import build_app

manager = ProgressManager(settings=ProgressSettings(redis_url={url!r}, key_prefix={prefix!r}))
with TestClient(build_app(manager, metrics=True)) as client:
    print(metrics.AVAILABLE, manager.metrics_enabled, client.get("/progress/metrics").status_code,
          client.get("/progress/health").status_code)
"""


def test_without_the_extra_nothing_breaks_and_metrics_are_absent(web_settings: ProgressSettings) -> None:
    """Without prometheus_client the app serves /health and has no /metrics route."""
    code = textwrap.dedent(NO_EXTRA_APP).format(url=web_settings.redis_url, prefix=web_settings.key_prefix)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "404", "200"]
