"""A real run of the web half, scraped like Prometheus would, drawn as an SVG for docs/operating.md.

A uvicorn server on a private Redis; 40 WebSocket clients watch 8 operations while a publisher writes 25 entries per
second to each; Redis is stopped for a few seconds in the middle. ``/progress/metrics`` is scraped every half second
and four panels are drawn: connections, messages delivered per second, ``redis_up`` and the delivery lag (mean over
each scrape interval). Run: ``.venv/bin/python -m benchmarks.plot_metrics --output docs/metrics-run.svg``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
import uuid
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from starlette.requests import HTTPConnection
from websockets.asyncio.client import connect

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web import AsyncProgressPublisher, ProgressManager, create_progress_router
from devtools.processes import free_port
from devtools.servers import PrivateRedis

OPERATIONS = 8
CLIENTS_PER_OPERATION = 5
ENTRIES_PER_SECOND = 25
SCRAPE_SECONDS = 0.5
PHASES = (("steady", 6.0), ("redis down", 4.0), ("recovered", 6.0))

Series = dict[str, list[tuple[float, float]]]


def app_for(manager: ProgressManager) -> FastAPI:
    app = FastAPI(lifespan=manager.lifespan)

    def user(connection: HTTPConnection) -> str:
        return connection.query_params.get("user", "viewer")

    async def anyone(user_id: str, name: str) -> bool:
        return True

    app.include_router(create_progress_router(manager, get_user_id=user, authorize=anyone, metrics=True), prefix="/p")
    return app


def sample(text: str, name: str, **labels: str) -> float:
    """The value of ``celery_progress_ws_<name>`` with ``labels``, summed over any other labels."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == "celery_progress_ws_" + name and labels.items() <= found.labels.items():
                total += found.value
    return total


async def watch(url: str, stop: asyncio.Event) -> None:
    """One viewer that reconnects (after a short pause) whenever the server closes its socket."""
    while not stop.is_set():
        with contextlib.suppress(OSError, Exception):
            async with connect(url) as websocket:
                async for _ in websocket:
                    if stop.is_set():
                        return
        await asyncio.sleep(0.2)


async def publish(settings: ProgressSettings, operations: list[str], stop: asyncio.Event) -> None:
    client = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    publisher = AsyncProgressPublisher(client, settings)
    count = 0
    try:
        while not stop.is_set():
            count += 1
            for operation in operations:
                with contextlib.suppress(Exception):  # Redis is down for a while on purpose
                    await publisher.publish(operation, "chunking_progress", {"documents_processed": count})
            await asyncio.sleep(1 / ENTRIES_PER_SECOND)
    finally:
        await client.aclose()


async def record(port: int, redis: PrivateRedis, started: float) -> Series:
    series: Series = {"connections": [], "delivered/s": [], "redis_up": [], "lag ms (mean)": []}
    previous: tuple[float, float, float, float] | None = None
    schedule, at = [], 0.0
    for name, seconds in PHASES:
        schedule.append((at, name))
        at += seconds
    async with httpx.AsyncClient(timeout=5) as http:
        while (now := time.monotonic() - started) < at:
            if now >= PHASES[0][1] and now < PHASES[0][1] + PHASES[1][1] and redis.pid is not None:
                redis.stop()
            elif now >= PHASES[0][1] + PHASES[1][1] and redis.pid is None:
                redis.start()
            text = (await http.get(f"http://127.0.0.1:{port}/p/metrics")).text
            delivered = sample(text, "messages_delivered_total")
            lag_sum, lag_count = sample(text, "delivery_lag_seconds_sum"), sample(text, "delivery_lag_seconds_count")
            series["connections"].append((now, sample(text, "connections")))
            series["redis_up"].append((now, sample(text, "redis_up", half="web")))
            if previous is not None:
                elapsed = now - previous[0]
                series["delivered/s"].append((now, (delivered - previous[1]) / elapsed))
                count = lag_count - previous[3]
                series["lag ms (mean)"].append((now, 1000 * (lag_sum - previous[2]) / count if count else 0.0))
            previous = (now, delivered, lag_sum, lag_count)
            await asyncio.sleep(SCRAPE_SECONDS)
    return series


def svg(series: Series, title: str) -> str:
    """Four stacked line panels, drawn by hand (no plotting library needed)."""
    width, panel, left, gap = 720, 110, 70, 30
    height = gap + len(series) * (panel + gap)
    end = max(t for points in series.values() for t, _ in points) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">{title}</text>',
    ]
    down_from, down_to = PHASES[0][1], PHASES[0][1] + PHASES[1][1]
    for index, (name, points) in enumerate(series.items()):
        top = gap + index * (panel + gap)
        peak = max((v for _, v in points), default=1.0) or 1.0

        def x(t: float) -> float:
            return left + (width - left - 20) * t / end

        def y(v: float, top: int = top, peak: float = peak) -> float:
            return top + panel - panel * v / peak

        parts.append(f'<rect x="{x(down_from):.1f}" y="{top}" width="{x(down_to) - x(down_from):.1f}" '
                     f'height="{panel}" fill="#fde2e2"/>')  # fmt: skip
        parts.append(f'<line x1="{left}" y1="{top + panel}" x2="{width - 20}" y2="{top + panel}" stroke="#888"/>')
        parts.append(f'<text x="6" y="{top + 14}">{name}</text>')
        parts.append(f'<text x="6" y="{top + 30}" fill="#666">max {peak:.4g}</text>')
        line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        parts.append(f'<polyline points="{line}" fill="none" stroke="#1f6fb2" stroke-width="1.5"/>')
    parts.append(f'<text x="{left}" y="{height - 8}" fill="#666">seconds; shaded: Redis stopped</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


async def run() -> str:
    """Run the scenario and return the SVG."""
    with PrivateRedis() as redis:
        settings = ProgressSettings(
            redis_url=redis.url,
            key_prefix=f"plot:{uuid.uuid4().hex[:8]}:",
            throttle_seconds=0.0,
            heartbeat_seconds=1.0,
            reconnect_max_seconds=0.5,
        )
        manager = ProgressManager(settings=settings, metrics_registry=CollectorRegistry())
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app_for(manager), port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:  # noqa: ASYNC110 - uvicorn's flag, set in another thread, has no event
            await asyncio.sleep(0.05)
        operations = [f"op-{uuid.uuid4().hex[:8]}" for _ in range(OPERATIONS)]
        stop = asyncio.Event()
        base = f"ws://127.0.0.1:{port}/p/operations"
        viewers = [
            asyncio.create_task(watch(f"{base}/{operation}/ws?user=u{n}", stop))
            for operation in operations
            for n in range(CLIENTS_PER_OPERATION)
        ]
        writer = asyncio.create_task(publish(settings, operations, stop))
        try:
            series = await record(port, redis, time.monotonic())
        finally:
            stop.set()
            for viewer in viewers:
                viewer.cancel()
            await asyncio.gather(writer, *viewers, return_exceptions=True)
            server.should_exit = True
            thread.join(10)
    title = f"{OPERATIONS * CLIENTS_PER_OPERATION} viewers, {OPERATIONS} operations x {ENTRIES_PER_SECOND} entries/s"
    return svg(series, title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/metrics-run.svg"))
    output: Path = parser.parse_args().output
    output.write_text(asyncio.run(run()))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
