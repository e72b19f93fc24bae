"""The shared rules of `_core.policy`: which entries end an operation, when a reader is finished, and stream TTLs."""

from __future__ import annotations

from typing import Any

import pytest

from celery_progress_ws import ProgressSettings, TaskStatus
from celery_progress_ws._core.policy import is_finished, is_terminal, terminal_status, terminal_status_of, ttl_for
from celery_progress_ws._worker.buffer import Rank
from celery_progress_ws._worker.results import rank_of


def status(value: object) -> dict[str, Any]:
    return {"timestamp": "t", "type": "status_update", "data": {"status": value}}


def test_terminal_status() -> None:
    """Only completed, failed and cancelled status entries end an operation."""
    assert terminal_status(status("failed")) is TaskStatus.FAILED
    assert terminal_status(status(TaskStatus.CANCELLED)) is TaskStatus.CANCELLED
    assert terminal_status(status("started")) is None
    assert terminal_status({"type": "tick", "data": {"status": "completed"}}) is None
    assert is_terminal(status("completed"))
    assert not is_terminal(status("retrying"))


@pytest.mark.parametrize("data", [None, "completed", ["completed"], {"status": ["completed"]}, {}])
def test_an_unstored_message_of_any_shape_is_never_terminal_by_accident(data: object) -> None:
    """Messages sent without storing them may have any `data`: only a mapping with a terminal status is terminal."""
    assert terminal_status_of("status_update", data) is None
    assert not is_terminal({"type": "status_update", "data": data})


@pytest.mark.parametrize(
    ("position", "newest_id", "newest", "finished"),
    [
        ((5, 0), (5, 0), status("completed"), True),
        ((5, 0), (5, 0), status("started"), False),
        ((4, 0), (5, 0), status("completed"), False),
        ((6, 0), (5, 0), status("completed"), False),
        (None, (5, 0), status("completed"), False),
        ((5, 0), None, None, False),
        ((5, 0), (5, 0), None, False),
    ],
)
def test_finished_means_at_the_newest_entry_and_it_is_terminal(
    position: tuple[int, int] | None,
    newest_id: tuple[int, int] | None,
    newest: dict[str, Any] | None,
    finished: bool,
) -> None:
    """A reader is finished only at the stream's newest entry when that entry is terminal; any other id reads on."""
    assert is_finished(position, newest_id, newest) is finished


def test_ttl_follows_the_seed_policy_and_the_settings() -> None:
    """86400 s while running, 300 s after completed/cancelled, 60 s after failed; each configurable."""
    settings = ProgressSettings(stream_ttl_seconds=10, completed_ttl_seconds=5, failed_ttl_seconds=2)
    assert ttl_for(ProgressSettings(), "chunking_progress", {}) == 86400
    assert ttl_for(ProgressSettings(), "status_update", {"status": "completed"}) == 300
    assert ttl_for(ProgressSettings(), "status_update", {"status": "failed"}) == 60
    assert ttl_for(settings, "status_update", {"status": "started"}) == 10
    assert ttl_for(settings, "status_update", {"status": "cancelled"}) == 5
    assert ttl_for(settings, "status_update", {"status": "failed"}) == 2
    assert ttl_for(settings, "note", {"status": "failed"}) == 10


def test_the_write_buffer_keeps_what_the_policy_calls_terminal_longest() -> None:
    """The worker's overflow ranking asks the same rule: terminal status updates rank above events and progress."""
    assert rank_of("status_update", {"status": "failed"}) is Rank.TERMINAL
    assert rank_of("status_update", {"status": "started"}) is Rank.EVENT
    assert rank_of("chunking_progress", {"status": "completed"}) is Rank.PROGRESS
