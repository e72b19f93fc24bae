"""The example Django project served by uvicorn through ``ProgressDispatcher``, fed by a real prefork worker: the
logged-in owner watches a task, anyone else is refused, and Django's own views keep working under the same server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from celery_progress_ws._core.keys import KeySpace
from tests.support.django_stack import DjangoStack, DjangoUser
from tests.support.harness import SseEvent, receive_json, sse_events

pytestmark = pytest.mark.integration


def ws_url(stack: DjangoStack, operation_id: str, port: int | None = None) -> str:
    return f"ws://127.0.0.1:{port or stack.port}/progress/operations/{operation_id}/ws"


def stream_ids(client: redis.Redis, prefix: str, operation_id: str) -> list[str]:
    return [entry_id for entry_id, _ in client.xrange(KeySpace(prefix).stream(operation_id))]


def assert_ran_to_completion(messages: list[dict[str, Any]]) -> None:
    """Progress rose to 100 % and the last entry is the ``completed`` status."""
    percents = [m["data"]["progress_percentage"] for m in messages if m["type"] == "chunking_progress"]
    assert percents, "no progress was delivered"
    assert percents == sorted(percents)
    assert percents[-1] == 100
    assert messages[-1]["type"] == "status_update"
    assert messages[-1]["data"]["status"] == "completed"


async def watch_socket(url: str, cookie: str | None) -> tuple[list[dict[str, Any]], int]:
    """Every message of a WebSocket until the server closes it, and the close code."""
    headers = {"Cookie": cookie} if cookie else {}
    messages: list[dict[str, Any]] = []
    async with connect(url, additional_headers=headers) as websocket:
        with contextlib.suppress(ConnectionClosedError):  # a close other than 1000 ends the iteration with it
            async with asyncio.timeout(60):
                async for message in websocket:
                    messages.append(json.loads(message))
    assert websocket.close_code is not None
    return messages, websocket.close_code


async def test_owner_receives_progress_to_completed_over_websocket(
    django_stack: DjangoStack, demo_user: DjangoUser, redis_client: redis.Redis, django_prefix: str
) -> None:
    """The logged-in user who started a task gets every entry of it over WebSocket, progress to 100 %, `completed`,
    then close 1000."""
    operation_id = demo_user.start_task(documents=4)
    messages, code = await watch_socket(ws_url(django_stack, operation_id), demo_user.cookie_header)
    assert code == 1000
    assert_ran_to_completion(messages)
    assert [m["id"] for m in messages] == stream_ids(redis_client, django_prefix, operation_id)


async def test_owner_receives_progress_to_completed_over_sse(django_stack: DjangoStack, demo_user: DjangoUser) -> None:
    """The same over Server-Sent Events: the stream carries progress to 100 % and `completed`, then ends."""
    operation_id = demo_user.start_task(documents=4)
    messages: list[dict[str, Any]] = []
    cookies = dict(demo_user.client.cookies.items())
    url = f"{django_stack.base_url}/progress/operations/{operation_id}/events"
    async with httpx.AsyncClient(timeout=60, cookies=cookies) as client, client.stream("GET", url) as response:
        assert response.status_code == 200
        async for event in sse_events(response.aiter_lines()):
            if isinstance(event, SseEvent) and "id" in event:
                messages.append({**json.loads(event["data"]), "id": event["id"]})
    assert_ran_to_completion(messages)


async def test_anonymous_and_other_users_are_refused(
    django_stack: DjangoStack, demo_user: DjangoUser, other_user: DjangoUser
) -> None:
    """Without a session, with a session of another user (not the job's owner in the ORM) or with a made-up session
    cookie: the WebSocket is closed with 1008 before any entry, the event stream, snapshot and cancel get 403."""
    operation_id = demo_user.start_task(documents=3)
    for cookie in (None, other_user.cookie_header, "sessionid=notasession"):
        messages, code = await watch_socket(ws_url(django_stack, operation_id), cookie)
        assert (messages, code) == ([], 1008)
        headers = {"Cookie": cookie} if cookie else {}
        base = f"{django_stack.base_url}/progress/operations/{operation_id}"
        async with httpx.AsyncClient(headers=headers, timeout=15) as client:
            assert (await client.get(f"{base}/events")).status_code == 403
            assert (await client.get(base)).status_code == 403
            assert (await client.post(f"{base}/cancel")).status_code == 403
    assert demo_user.client.get(f"/progress/operations/{operation_id}").status_code == 200


async def test_a_logged_out_session_is_refused(django_stack: DjangoStack) -> None:
    """After Django's logout view ends the session, its old cookie no longer opens the owner's WebSocket."""
    user = DjangoUser(django_stack.base_url, "demo", "demo")
    try:
        operation_id = user.start_task(documents=2)
        old_cookie = user.cookie_header
        token = user.client.cookies["csrftoken"]
        assert user.client.post("/logout/", headers={"X-CSRFToken": token}).status_code == 302
        messages, code = await watch_socket(ws_url(django_stack, operation_id), old_cookie)
        assert (messages, code) == ([], 1008)
    finally:
        user.close()


def test_django_views_work_beside_the_progress_routes(django_stack: DjangoStack, demo_user: DjangoUser) -> None:
    """Under the same server Django answers its own URLs (login redirect, the page, a JSON view, its 404), the
    progress app serves the bundled client and its health, and the server's lifespan events reached the manager."""
    operation_id = demo_user.start_task(documents=1, seconds_per_document=0)
    anonymous = httpx.get(f"{django_stack.base_url}/")
    assert (anonymous.status_code, anonymous.headers["location"]) == (302, "/login/?next=/")
    page = demo_user.client.get("/")
    assert page.status_code == 200
    assert 'import { subscribe } from "/progress/client.js"' in page.text
    jobs = demo_user.client.get("/api/jobs").json()
    assert jobs["user"] == "demo"
    assert operation_id in [job["operation_id"] for job in jobs["jobs"]]
    assert demo_user.client.get("/no-such-page").status_code == 404
    client_js = demo_user.client.get("/progress/client.js")
    assert (client_js.status_code, client_js.headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert demo_user.client.get("/progress/health").json() == {"status": "ok", "redis": "connected"}
    assert "Application startup complete" in django_stack.log("web")  # uvicorn's lifespan startup succeeded


async def test_hosts_outside_allowed_hosts_and_other_origins_are_refused(
    django_stack: DjangoStack, demo_user: DjangoUser
) -> None:
    """A progress request whose Host is not in ALLOWED_HOSTS gets 400 (its WebSocket handshake 403), a page of an
    origin outside CSRF_TRUSTED_ORIGINS gets 403, the app's own origin is served; a WebSocket outside the prefix is
    refused (Django serves no WebSockets)."""
    operation_id = demo_user.start_task(documents=1, seconds_per_document=0)
    snapshot = f"/progress/operations/{operation_id}"
    assert demo_user.client.get(snapshot, headers={"Host": "evil.example"}).status_code == 400
    with pytest.raises(InvalidStatus) as refused_host:
        async with connect(ws_url(django_stack, operation_id), additional_headers={"Host": "evil.example"}):
            pass
    assert refused_host.value.response.status_code == 403
    assert demo_user.client.get(snapshot, headers={"Origin": "http://evil.example"}).status_code == 403
    assert demo_user.client.get(snapshot, headers={"Origin": django_stack.base_url}).status_code == 200
    with pytest.raises(InvalidStatus) as refused_path:
        async with connect(f"ws://127.0.0.1:{django_stack.port}/ws"):
            pass
    assert refused_path.value.response.status_code == 403


async def test_without_lifespan_events_the_dispatcher_starts_and_stops_the_manager(
    django_stack: DjangoStack, demo_user: DjangoUser
) -> None:
    """Served with ``--lifespan off``, the first progress request starts the manager (a task is watched to
    `completed`), and when the server exits the dispatcher stops the manager, which closes the sockets still open."""
    port = django_stack.start_web("web-no-lifespan", "--lifespan", "off")
    operation_id = demo_user.start_task(documents=3)
    messages, code = await watch_socket(ws_url(django_stack, operation_id, port), demo_user.cookie_header)
    assert code == 1000
    assert_ran_to_completion(messages)
    running = demo_user.start_task(documents=40, seconds_per_document=0.1)
    headers = {"Cookie": demo_user.cookie_header}
    async with connect(ws_url(django_stack, running, port), additional_headers=headers) as websocket:
        await receive_json(websocket)  # connected, the task is under way
        web = django_stack.process("web-no-lifespan")
        web.popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(20):
                async for _ in websocket:
                    pass
    assert websocket.close_code in (1001, 1012)  # the manager's shutdown or uvicorn's, whichever closes first
    assert web.popen.wait(30) in (0, -signal.SIGTERM)  # uvicorn raises the signal again once it has shut down
    log = django_stack.log("web-no-lifespan")
    assert "Waiting for application startup" not in log
    assert "Server exiting without lifespan events: stopping the progress manager" in log
    assert log.index("Progress manager stopped") < log.index("Finished server process")
