"""Fixtures for end-to-end tests of the example project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import ExampleStack


@pytest.fixture
def stack(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[ExampleStack]:
    """The example worker and web app, running against this test's Redis key prefix."""
    example = ExampleStack(redis_url, key_prefix, tmp_path)
    try:
        example.start()
        yield example
    finally:
        example.stop()
