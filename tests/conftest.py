"""Shared fixtures: a real Redis (the configured one, localhost:6379, or a private embedded server), a key prefix
per test whose keys are deleted afterwards, and settings pointing at both."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from celery_progress_ws import ProgressSettings
from devtools.servers import PrivateRedis, resolve_redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the shared Redis the tests write to (under their own key prefixes only)."""
    url, server = resolve_redis()
    try:
        yield url
    finally:
        if server is not None:
            server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client that decodes responses."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def key_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    prefix = f"cpws-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    keys = list(redis_client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def settings(redis_url: str, key_prefix: str) -> ProgressSettings:
    """Settings for this test's Redis and key prefix, with a short throttle."""
    return ProgressSettings(redis_url=redis_url, key_prefix=key_prefix, throttle_seconds=0.2)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis-compatible server of this test's own, on a free port; only it is ever stopped or restarted."""
    with PrivateRedis() as server:
        yield server
