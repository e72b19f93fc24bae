"""Fixtures for the Django integration: the example Django project served by uvicorn beside a prefork worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import delete_keys_under
from tests.support.django_stack import DjangoStack, DjangoUser


@pytest.fixture(scope="module")
def django_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix for one test module's Django stack; its keys are deleted after the module."""
    prefix = f"cpws-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        delete_keys_under(client, prefix)


@pytest.fixture(scope="module")
def django_stack(redis_url: str, django_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DjangoStack]:
    """The example Django project (its own SQLite file), a prefork worker and uvicorn, for one test module."""
    stack = DjangoStack(redis_url, django_prefix, Path(tmp_path_factory.mktemp("django")))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def demo_user(django_stack: DjangoStack) -> Iterator[DjangoUser]:
    """The example's ``demo`` user, logged in."""
    user = DjangoUser(django_stack.base_url, "demo", "demo")
    try:
        yield user
    finally:
        user.close()


@pytest.fixture
def other_user(django_stack: DjangoStack) -> Iterator[DjangoUser]:
    """The example's ``other`` user, logged in: not the owner of ``demo``'s jobs."""
    user = DjangoUser(django_stack.base_url, "other", "other")
    try:
        yield user
    finally:
        user.close()
