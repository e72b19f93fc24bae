"""Cross-site requests: pages of other origins are refused on every route (403) before anything else happens."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from celery import Celery
from celery.worker import state as worker_state
from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web import ProgressManager
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from celery_progress_ws.web._origin import OriginPolicy
from tests.support.harness import ThreadServer, receive_json, receive_until_closed, ws_url

pytestmark = pytest.mark.integration

EVIL = "https://evil.example"
APP = "https://app.example.com"


def own(server: ThreadServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def handshake(url: str, origin: str | None = None, **options: Any) -> int:
    """The status of a WebSocket handshake: 101 once the first message arrived, else the HTTP status refusing it."""
    try:
        async with connect(url, origin=Origin(origin) if origin else None, **options) as websocket:
            await receive_json(websocket)
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.fixture
async def operation(web_publisher: AsyncProgressPublisher) -> str:
    """An operation with one entry, so an accepted socket receives something at once."""
    operation_id = f"op-{uuid.uuid4().hex[:8]}"
    await web_publisher.publish(operation_id, "status_update", {"status": "started"})
    return operation_id


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 101),
        ("own", 101),
        ("own-upper", 101),
        (EVIL, 403),
        ("null", 403),
        ("http://127.0.0.1", 403),  # same host, other port
        ("https-own", 403),  # same host and port, other scheme
        ("not an origin", 403),
    ],
)
async def test_websocket_accepts_no_origin_and_its_own_origin_only(
    server: ThreadServer, operation: str, origin: str | None, status: int
) -> None:
    """By default a socket opens without Origin or from the server's own origin; other origins and `null` get 403."""
    named = {"own": own(server), "own-upper": own(server).upper(), "https-own": f"https://127.0.0.1:{server.port}"}
    assert await handshake(ws_url(server, operation), named.get(origin or "", origin)) == status


async def test_channel_socket_is_guarded_too(server: ThreadServer) -> None:
    """The custom channel socket refuses another origin's page like the operation socket does."""
    url = f"{server.ws}/progress/channels/news/ws?user=alice"
    assert await handshake(url, EVIL) == 403


@pytest.mark.parametrize(
    ("allowed", "origin", "status"),
    [
        ([APP], APP, 101),
        (["HTTPS://App.Example.com:443"], APP, 101),
        ([APP], "https://app.example.com:8443", 403),
        ([APP], EVIL, 403),
        ([APP], "own", 101),
        (["*"], EVIL, 101),
        (["*"], "null", 403),
    ],
)
async def test_allowed_origins_add_to_the_servers_own(
    serve: Callable[..., ThreadServer],
    web_settings: ProgressSettings,
    operation: str,
    allowed: list[str],
    origin: str,
    status: int,
) -> None:
    """Listed origins (normalised: case, default port) and `*` are accepted besides the own one; `null` never is."""
    server = serve(web_settings, allowed_origins=allowed)
    assert await handshake(ws_url(server, operation), own(server) if origin == "own" else origin) == status


async def test_allowed_origins_come_from_a_json_list_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CELERY_PROGRESS_WS_ALLOWED_ORIGINS is a JSON list; its entries are normalised and invalid ones rejected."""
    monkeypatch.setenv("CELERY_PROGRESS_WS_ALLOWED_ORIGINS", '["https://App.example.com:443", "http://x.test:8080"]')
    assert ProgressSettings().allowed_origins == (APP, "http://x.test:8080")
    for invalid in ("null", "https://app.example.com/", "app.example.com", "https://user@app.example.com"):
        with pytest.raises(ValidationError):
            ProgressSettings(allowed_origins=[invalid])


@pytest.mark.parametrize("path", ["/progress/operations/{}/events", "/progress/operations/{}", "/progress/client.js"])
@pytest.mark.parametrize(("origin", "status"), [(EVIL, 403), ("null", 403), ("own", 200), (None, 200)])
async def test_http_routes_refuse_other_origins_with_403(
    server: ThreadServer, operation: str, path: str, origin: str | None, status: int
) -> None:
    """SSE, snapshot and client routes answer 403 to another origin's page and serve their own page and non-browsers."""
    headers = {"x-user": "alice"}
    if origin is not None:
        headers["Origin"] = own(server) if origin == "own" else origin
    url = server.http + path.format(operation)
    async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", url, headers=headers) as response:
        assert response.status_code == status
        if status == 403:
            await response.aread()
            assert response.json() == {"detail": "Origin not allowed"}


async def test_origin_is_checked_before_the_user(server: ThreadServer, caplog: pytest.LogCaptureFixture) -> None:
    """A cross-origin request without a user gets 403 for its origin, not 401 from get_user_id; nothing is logged
    above INFO."""
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{server.http}/progress/operations/op-1", headers={"Origin": EVIL})
    assert (response.status_code, response.json()["detail"]) == (403, "Origin not allowed")
    assert not [record for record in caplog.records if record.levelno > logging.INFO]


async def test_refused_sockets_take_no_slot(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, operation: str
) -> None:
    """Cross-origin sockets up to the user limit are refused without counting: the user's own page still connects."""
    server = serve(web_settings, max_connections_per_user=3)
    url = ws_url(server, operation)
    refused = [await handshake(url, EVIL) for _ in range(2 * server.manager.settings.max_connections_per_user)]
    assert refused == [403] * len(refused)
    assert server.manager.connection_count == 0
    async with connect(url, origin=Origin(own(server))) as first, connect(url, origin=Origin(own(server))) as second:
        await receive_json(first)
        await receive_json(second)
        assert await handshake(url, own(server)) == 101


def proxied_socket(server: ThreadServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port))


@pytest.mark.parametrize(
    ("options", "status"),
    [
        ({"proxy_headers": True, "forwarded_allow_ips": "127.0.0.1"}, 101),
        ({"proxy_headers": True, "forwarded_allow_ips": "10.1.2.3"}, 403),  # the proxy is not trusted
        ({"proxy_headers": False}, 403),
    ],
)
async def test_behind_a_tls_proxy_the_pages_own_origin_is_accepted_with_proxy_headers(
    web_settings: ProgressSettings, operation: str, options: dict[str, Any], status: int
) -> None:
    """Behind a TLS-terminating proxy (X-Forwarded-Proto https, Host passed on), the page's https origin is the
    server's own when uvicorn trusts the proxy's headers, and another origin otherwise."""
    manager = ProgressManager(settings=web_settings)
    server = ThreadServer(manager, **options)
    server.start()
    try:
        headers = {"X-Forwarded-Proto": "https"}
        url = f"ws://app.example.com/progress/operations/{operation}/ws?user=alice"
        got = await handshake(url, APP, additional_headers=headers, sock=proxied_socket(server), proxy=None)
        assert got == status
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(
                f"{server.http}/progress/operations/{operation}",
                headers={**headers, "Host": "app.example.com", "Origin": APP, "x-user": "alice"},
            )
        assert response.status_code == (200 if status == 101 else 403)
    finally:
        server.stop()


def test_the_policy_over_plain_asgi_scopes() -> None:
    """The check reads only an ASGI scope: wss pages are https origins, default ports are dropped, a missing or
    repeated Host or Origin is not the server's own."""

    def scope(kind: str, scheme: str, *headers: tuple[bytes, bytes], method: str = "GET") -> dict[str, Any]:
        return {"type": kind, "scheme": scheme, "method": method, "headers": list(headers), "path": "/x"}

    policy = OriginPolicy()
    host = (b"host", b"app.example.com:443")
    origin = (b"origin", APP.encode())
    assert policy.refusal(scope("websocket", "wss", host, origin)) is None
    assert policy.refusal(scope("websocket", "ws", host, origin)) == "Origin not allowed"
    assert policy.refusal(scope("http", "https", origin)) == "Origin not allowed"
    assert policy.refusal(scope("http", "https", host, host, origin)) == "Origin not allowed"
    assert policy.refusal(scope("http", "https", host, origin, origin)) == "Origin not allowed"
    assert policy.refusal(scope("http", "https", (b"host", b"[::1]:443"), (b"origin", b"https://[::1]"))) is None
    cross_site = (b"sec-fetch-site", b"cross-site")
    assert policy.refusal(scope("http", "https", host, cross_site)) is None  # a GET changes nothing
    assert policy.refusal(scope("http", "https", host, cross_site, method="POST")) == "Cross-site request refused"
    listed = OriginPolicy([EVIL])
    evil_post = scope("http", "https", host, cross_site, (b"origin", EVIL.encode()), method="POST")
    assert listed.refusal(evil_post) is None
    assert OriginPolicy(["*"]).refusal(evil_post) == "Cross-site request refused"


async def test_cross_site_cancel_is_refused_and_revokes_nothing(
    cancel_server: ThreadServer, progress_worker: Celery, module_settings: ProgressSettings
) -> None:
    """A cross-site form POST to cancel (another Origin, or Sec-Fetch-Site: cross-site) gets 403 and the running task
    is neither revoked nor marked cancelled: it completes."""
    release = f"{module_settings.key_prefix}release-{uuid.uuid4().hex[:8]}"
    task_id = progress_worker.send_task("cpws.wait_for_key", args=(module_settings.redis_url, release, 30)).id
    url = f"{cancel_server.http}/progress/operations/{task_id}/cancel"
    form = {"Content-Type": "application/x-www-form-urlencoded", "x-user": "alice"}
    try:
        async with connect(ws_url(cancel_server, task_id)) as websocket:
            while (await receive_json(websocket, within=20))["type"] != "chunking_progress":
                pass  # the task is running once it reports
            async with httpx.AsyncClient(timeout=10) as client:
                by_origin = await client.post(url, headers={**form, "Origin": EVIL, "Sec-Fetch-Site": "cross-site"})
                by_fetch_site = await client.post(url, headers={**form, "Sec-Fetch-Site": "cross-site"})
                await cancel_server.call(cancel_server.manager.redis.set(release, 1, ex=60))
                messages = await receive_until_closed(websocket)
                own_page = {**form, "Origin": f"http://127.0.0.1:{cancel_server.port}", "Sec-Fetch-Site": "same-origin"}
                too_late = await client.post(url, headers=own_page)
    finally:
        await cancel_server.call(cancel_server.manager.redis.set(release, 1, ex=60))
    assert (by_origin.status_code, by_origin.json()["detail"]) == (403, "Origin not allowed")
    assert (by_fetch_site.status_code, by_fetch_site.json()["detail"]) == (403, "Cross-site request refused")
    assert [m["data"]["status"] for m in messages if m["type"] == "status_update"] == ["completed"]
    assert task_id not in worker_state.revoked
    assert too_late.status_code == 409  # the page's own POST passes the checks and reaches the canceller
