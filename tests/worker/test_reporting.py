"""report_progress and send_event: operation context, bad values, computed fields and the cheap dropped path."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import date
from decimal import Decimal
from enum import IntEnum
from fractions import Fraction

import pytest
import redis

from celery_progress_ws import (
    EntryTooLarge,
    NoOperationContext,
    ProgressPublisher,
    ProgressSettings,
    PublishResult,
    report_progress,
    send_event,
)
from celery_progress_ws._worker.reporting import default_publisher, set_default_publisher
from devtools.servers import PrivateRedis
from tests.support.streams import kinds, progress_values, read

pytestmark = pytest.mark.integration


def test_outside_a_task_without_an_operation_id_is_an_error() -> None:
    """Outside any task and without operation_id, both calls raise NoOperationContext."""
    with pytest.raises(NoOperationContext):
        report_progress(1, 2)
    with pytest.raises(RuntimeError, match="operation_id"):
        send_event("chunking_started")


def test_explicit_operation_id_goes_through_the_default_publisher(
    default_publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """With operation_id= outside a task, entries go to that operation's stream through the installed default."""
    assert report_progress(1, 4, operation_id="dom-1", message="one", current_document="a.pdf") is PublishResult.SENT
    assert send_event("chunking_document_complete", {"document": "a.pdf"}, operation_id="dom-1") is PublishResult.SENT
    entries = read(redis_client, settings, "dom-1")
    assert kinds(entries) == ["progress:1", "chunking_document_complete"]
    assert entries[0]["data"] == {
        "progress_percentage": 25.0,
        "documents_processed": 1,
        "total_documents": 4,
        "chunks_created": None,
        "current_document": "a.pdf",
        "message": "one",
        "rate": None,
        "eta_seconds": None,
    }


@pytest.mark.parametrize(
    ("current", "total", "error"),
    [
        (-1, 10, ValueError),
        (1, -10, ValueError),
        (math.nan, 10, ValueError),
        (1, math.inf, ValueError),
        (math.inf, None, ValueError),
        ("3", 10, TypeError),
        (None, 10, TypeError),
        (True, 10, TypeError),
        (1, "10", TypeError),
        (Decimal(1), 10, TypeError),
    ],
    ids=repr,
)
def test_bad_counts_raise_even_when_the_call_would_be_dropped(
    default_publisher: ProgressPublisher, current: object, total: object, error: type[Exception]
) -> None:
    """Negative, NaN, infinite or non-real counts raise before anything is stored, on first and throttled calls."""
    with pytest.raises(error):
        report_progress(current, total, operation_id="bad-first")  # type: ignore[arg-type]
    report_progress(1, 10, operation_id="bad-later")
    with pytest.raises(error):
        report_progress(current, total, operation_id="bad-later")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "total", "percentage", "eta"),
    [(15, 10, 100.0, 0.0), (3, 0, 100.0, 0.0), (3, None, None, None), (Fraction(1, 2), 2, 25.0, None)],
    ids=["over", "zero-total", "unknown-total", "fraction"],
)
def test_unusual_counts_have_documented_results(
    default_publisher: ProgressPublisher,
    settings: ProgressSettings,
    redis_client: redis.Redis,
    current: float,
    total: float | None,
    percentage: float | None,
    eta: float | None,
) -> None:
    """current > total caps at 100 %, total 0 is 100 %, no total means no %/ETA, reals become floats."""
    report_progress(current, total, operation_id="odd")
    [entry] = read(redis_client, settings, "odd")
    assert entry["data"]["progress_percentage"] == percentage
    assert entry["data"]["eta_seconds"] == eta


def test_extra_fields_are_kept_and_unserializable_ones_become_strings(
    default_publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """Extra keyword fields land in data; values JSON cannot represent are written as their str()."""

    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    report_progress(1, 2, operation_id="extras", chunks_created=7, strategy="semantic", thing=Opaque())
    [entry] = read(redis_client, settings, "extras")
    assert entry["data"]["chunks_created"] == 7
    assert entry["data"]["strategy"] == "semantic"
    assert entry["data"]["thing"] == "opaque!"


@pytest.mark.parametrize("name", ["progress_percentage", "rate", "eta_seconds", "documents_processed"])
def test_extra_fields_may_not_overwrite_computed_ones(
    default_publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis, name: str
) -> None:
    """A clashing extra raises TypeError when published and leaves no state; held back, it is ignored."""
    with pytest.raises(TypeError, match=name):
        report_progress(1, 2, operation_id="clash", **{name: -1})
    assert report_progress(1, 2, operation_id="clash") is PublishResult.SENT  # the refused call counted for nothing
    report_progress(1, 10, operation_id="clash-later")
    assert report_progress(2, 10, operation_id="clash-later", **{name: -1}) is PublishResult.THROTTLED
    assert default_publisher.flush(timeout=2)
    held_back = read(redis_client, settings, "clash-later")[-1]["data"]
    assert held_back["documents_processed"] == 2
    assert held_back[name] != -1


@pytest.mark.parametrize(
    ("event_type", "data", "error"),
    [
        ("status_update", {}, ValueError),
        ("chunking_progress", {}, ValueError),
        ("history_gap", {}, ValueError),
        ("", {}, ValueError),
        ("has space", {}, ValueError),
        ("x" * 65, {}, ValueError),
        (7, {}, ValueError),
        ("fine", ["not", "a", "mapping"], TypeError),
    ],
    ids=repr,
)
def test_send_event_refuses_reserved_or_malformed_input(
    default_publisher: ProgressPublisher, event_type: object, data: object, error: type[Exception]
) -> None:
    """send_event refuses the library's own entry types, malformed type names and non-mapping data."""
    with pytest.raises(error):
        send_event(event_type, data, operation_id="ev")  # type: ignore[arg-type]


def test_a_dropped_call_does_no_io(private_redis: PrivateRedis, key_prefix: str, progress_log: list[object]) -> None:
    """Held-back calls never touch Redis: with the server stopped they neither fail, log nor mark it down."""
    settings = ProgressSettings(redis_url=private_redis.url, key_prefix=key_prefix, throttle_seconds=60)
    with ProgressPublisher(settings) as publisher:
        previous = set_default_publisher(publisher)
        try:
            assert report_progress(1, 10_000, operation_id="quiet") is PublishResult.SENT
            private_redis.stop()
            for i in range(2, 1000):
                assert report_progress(i, 10_000, operation_id="quiet") is PublishResult.THROTTLED
            assert publisher.healthy
            assert progress_log == []
        finally:
            set_default_publisher(previous)
            private_redis.start()


def test_the_default_publisher_is_built_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an installed default, the first use builds one from CELERY_PROGRESS_WS_* and keeps it."""
    monkeypatch.setenv("CELERY_PROGRESS_WS_KEY_PREFIX", "from-env:")
    previous = set_default_publisher(None)
    try:
        built = default_publisher()
        assert built.settings.key_prefix == "from-env:"
        assert default_publisher() is built
        built.close()
    finally:
        set_default_publisher(previous)


def test_importing_the_package_has_no_side_effects() -> None:
    """Importing celery_progress_ws reads no environment, starts no thread and imports no web framework."""
    code = (
        "import sys, threading, celery_progress_ws; "
        "assert threading.active_count() == 1; assert 'fastapi' not in sys.modules; "
        "assert 'celery_progress_ws.web' not in sys.modules"
    )
    env = {"CELERY_PROGRESS_WS_THROTTLE_SECONDS": "not a number", "PATH": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_an_oversized_entry_raises_when_published_and_is_skipped_when_held_back(
    redis_url: str, key_prefix: str, redis_client: redis.Redis, progress_log: list[object]
) -> None:
    """Over max_entry_bytes, a published report raises EntryTooLarge; a held-back one is logged and skipped."""
    settings = ProgressSettings(redis_url=redis_url, key_prefix=key_prefix, max_entry_bytes=400, throttle_seconds=60)
    with ProgressPublisher(settings) as publisher:
        previous = set_default_publisher(publisher)
        try:
            with pytest.raises(EntryTooLarge):
                report_progress(1, 2, operation_id="big", blob="x" * 1000)
            assert report_progress(1, 10, operation_id="big-later") is PublishResult.SENT
            assert report_progress(2, 10, operation_id="big-later", blob="x" * 1000) is PublishResult.THROTTLED
            assert publisher.flush(timeout=2)
        finally:
            set_default_publisher(previous)
    assert progress_values(read(redis_client, settings, "big-later")) == [1]
    assert len(progress_log) == 1


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Level(IntEnum):
    HIGH = 3


def test_odd_values_are_converted_or_refused_at_the_call_even_when_dropped(
    default_publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """report_progress refuses a bad extra or message when the throttle would drop the call, send_event a bad data
    value; both convert the rest at the call (date, IntEnum)."""
    report_progress(1, 10, operation_id="odd-call")
    with pytest.raises(TypeError, match=r"^bad\[\(1, 2\)\]: a tuple key"):
        report_progress(2, 10, operation_id="odd-call", bad={(1, 2): 3})
    with pytest.raises(TypeError, match=r"^message: str\(\)"):
        report_progress(2, 10, operation_id="odd-call", message=Unprintable())  # type: ignore[arg-type]
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match=r"^data\.bad\[0\]: circular"):
        send_event("tick", {"bad": loop}, operation_id="odd-call")
    assert report_progress(3, 10, operation_id="odd-call", day=date(2026, 1, 2), level=Level.HIGH) is (
        PublishResult.THROTTLED
    )
    assert default_publisher.flush(timeout=2)
    entries = read(redis_client, settings, "odd-call")
    assert progress_values(entries) == [1, 3]
    assert (entries[1]["data"]["day"], entries[1]["data"]["level"]) == ("2026-01-02", 3)
