"""The Django helpers that read Django's settings or run Django code, in this process with the example's settings."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import django
import pytest
from django.test import override_settings

from celery_progress_ws.contrib.django import ProgressDispatcher, django_allowed_origins, orm_authorize
from celery_progress_ws.contrib.django._hosts import host_allowed


@pytest.fixture(scope="module", autouse=True)
def django_settings() -> Iterator[None]:
    """Django set up with the example project's settings (as the docs' examples do; Django sets up once a process).

    The variable goes afterwards: Celery apps made later in this process would otherwise load Celery's Django fixup,
    whose worker start runs ``django.setup()`` again and resets the loggers the project's ``LOGGING`` names."""
    had = "DJANGO_SETTINGS_MODULE" in os.environ
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.django_site.settings")
    django.setup()
    yield
    if not had:
        del os.environ["DJANGO_SETTINGS_MODULE"]


def host(value: str) -> dict[str, list[tuple[bytes, bytes]]]:
    return {"headers": [(b"host", value.encode())]}


def test_csrf_trusted_origins_become_allowed_origins() -> None:
    """Exact CSRF_TRUSTED_ORIGINS entries become normalised allowed_origins; wildcard and invalid ones are left out."""
    trusted = ["https://App.Example.com:443", "http://localhost:8000", "https://*.example.com", "not an origin"]
    with override_settings(CSRF_TRUSTED_ORIGINS=trusted):
        assert django_allowed_origins() == ["https://app.example.com", "http://localhost:8000"]


def test_hosts_are_matched_as_django_matches_allowed_hosts() -> None:
    """A leading dot allows a domain and its subdomains, ports do not matter, and a request with no or two Host
    headers is refused; with DEBUG and no ALLOWED_HOSTS only local hosts are allowed."""
    with override_settings(ALLOWED_HOSTS=[".example.com", "127.0.0.1"], DEBUG=False):
        assert host_allowed(host("example.com"))
        assert host_allowed(host("www.Example.com:8443"))
        assert host_allowed(host("127.0.0.1:8000"))
        assert not host_allowed(host("example.com.evil.net"))
        assert not host_allowed({"headers": []})
        assert not host_allowed({"headers": [(b"host", b"example.com"), (b"host", b"evil.net")]})
    with override_settings(ALLOWED_HOSTS=[], DEBUG=True):
        assert host_allowed(host("localhost:8000"))
        assert not host_allowed(host("example.com"))
    with override_settings(ALLOWED_HOSTS=[], DEBUG=False):
        assert not host_allowed(host("localhost"))


async def test_orm_authorize_refuses_anonymous_and_runs_sync_checks_off_the_event_loop() -> None:
    """Anonymous (None) is refused without asking the check; a sync check runs in another thread than the event
    loop's, and only ``True`` allows."""
    calls: list[tuple[object, str, str]] = []

    def check(user_id: object, operation_id: str) -> bool:
        calls.append((user_id, operation_id, threading.current_thread().name))
        return operation_id == "mine"

    authorize = orm_authorize(check)
    assert await authorize(None, "mine") is False
    assert calls == []
    assert await authorize(7, "mine") is True
    assert await authorize(7, "theirs") is False
    assert [(user, operation) for user, operation, _ in calls] == [(7, "mine"), (7, "theirs")]
    assert all(thread != threading.current_thread().name for _, _, thread in calls)


async def test_orm_authorize_awaits_async_checks_on_the_event_loop() -> None:
    """An async check is awaited as it is (it may use Django's async ORM); a truthy answer other than True refuses."""
    calls: list[tuple[object, str, str]] = []

    async def check(user_id: object, operation_id: str) -> bool:
        await asyncio.sleep(0)
        calls.append((user_id, operation_id, threading.current_thread().name))
        return operation_id == "mine"

    authorize = orm_authorize(check)
    assert await authorize(3, "mine") is True
    assert await authorize(None, "mine") is False
    assert calls == [(3, "mine", threading.current_thread().name)]
    assert await orm_authorize(lambda user_id, name: 1)(3, "mine") is False  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize("prefix", ["progress", "/progress/", ""])
def test_the_prefix_must_be_a_path_without_a_trailing_slash(prefix: str) -> None:
    """A prefix without a leading slash, with a trailing one, or empty is refused when the dispatcher is built."""

    async def app(scope: object, receive: object, send: object) -> None: ...

    with pytest.raises(ValueError, match="must start with"):
        ProgressDispatcher(app, app, prefix=prefix)  # type: ignore[arg-type]
