"""The web half and the `watch` command read streams by one gap rule: after a real Redis restart they agree."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from websockets.asyncio.client import connect

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from devtools.servers import PrivateRedis
from tests.support.harness import ROOT, ThreadServer, receive_json, receive_until_closed, ws_url

pytestmark = pytest.mark.integration

RUN_WATCH = "import sys; from celery_progress_ws._cli.watch_cli import main; sys.exit(main(sys.argv[1:]))"


def start_watch(settings: ProgressSettings, operation_id: str) -> subprocess.Popen[str]:
    """The watch command in its own process, printing JSON lines."""
    command = [sys.executable, "-c", RUN_WATCH, operation_id, "--json", "--timeout", "60"]
    command += ["--redis-url", settings.redis_url, "--key-prefix", settings.key_prefix]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def watch_line(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 20)
    return dict(json.loads(line))


def gaps(messages: list[dict[str, Any]]) -> list[str]:
    return [message["data"]["reason"] for message in messages if message["type"] == "history_gap"]


@pytest.mark.parametrize(("appendonly", "expected"), [(False, ["redis_restarted"]), (True, [])])
async def test_a_web_subscriber_and_the_watcher_decide_the_same_gap_after_a_restart(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, appendonly: bool, expected: list[str]
) -> None:
    """A restart that lost the stream is a `redis_restarted` gap for both; one that kept it (AOF) is no gap for both."""
    with PrivateRedis(appendonly=appendonly) as redis_server:
        settings = web_settings.model_copy(update={"redis_url": redis_server.url})
        client = Redis.from_url(redis_server.url, retry=Retry(NoBackoff(), 2))
        publisher = AsyncProgressPublisher(client, settings)
        server = serve(settings)
        operation = f"op-{uuid.uuid4().hex[:12]}"
        before = [await publisher.publish(operation, "note", {"n": n}, throttle=False) for n in range(2)]
        watcher = start_watch(settings, operation)
        try:
            async with connect(ws_url(server, operation)) as websocket:
                assert [(await receive_json(websocket))["id"] for _ in before] == before
                assert [(await watch_line(watcher))["id"] for _ in before] == before
                redis_server.restart()
                final = await publisher.publish(operation, "status_update", {"status": "completed"})
                web = await receive_until_closed(websocket, within=30)
            stdout, stderr = await asyncio.to_thread(watcher.communicate, timeout=60)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
            await client.aclose()
    watched = [json.loads(line) for line in stdout.splitlines()]
    assert watcher.returncode == 0, stderr
    assert (gaps(web), gaps(watched)) == (expected, expected)
    assert [message.get("id") for message in web if message["type"] != "history_gap"] == [final]
    assert [message.get("id") for message in watched if message["type"] != "history_gap"] == [final]
