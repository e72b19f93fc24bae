"""current_state from the operation getter, the JSON snapshot, and the package's public surface."""

from __future__ import annotations

import enum
import json
import types
from datetime import UTC, datetime
from typing import Any

import pytest

import celery_progress_ws.web as web
from celery_progress_ws.web._reads import Newest
from celery_progress_ws.web._state import current_state, snapshot


class Status(enum.Enum):
    RUNNING = "running"


class Operation:
    """Shaped like the seed application's ORM object."""

    status = Status.RUNNING
    type = Status.RUNNING
    created_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    started_at = None
    completed_at = None
    error_message = None


async def test_current_state_reads_objects_the_seed_way_and_mappings_as_they_are() -> None:
    """An object gives the seed's fields (enums as values, datetimes ISO); a mapping is sent as is; None is nothing."""
    from_object = await current_state(lambda operation_id: Operation(), "op")
    assert from_object is not None
    assert from_object["type"] == "current_state"
    assert from_object["data"] == {
        "status": "running",
        "operation_type": "running",
        "created_at": "2026-01-02T03:04:05+00:00",
        "started_at": None,
        "completed_at": None,
        "error_message": None,
    }

    async def mapping(operation_id: str) -> dict[str, Any]:
        return {"status": "queued", "owner": operation_id}

    from_mapping = await current_state(mapping, "op")
    assert from_mapping is not None
    assert from_mapping["data"] == {"status": "queued", "owner": "op"}
    assert await current_state(lambda operation_id: None, "op") is None


def entry(entry_type: str, data: dict[str, Any]) -> str:
    return json.dumps({"timestamp": f"t-{entry_type}", "type": entry_type, "data": data})


def test_snapshot_picks_the_newest_status_and_progress() -> None:
    """The snapshot reports the newest status and progress, and the stream's newest id even if that entry is skipped."""
    entries = [
        ("4-0", json.loads(entry("chunking_progress", {"documents_processed": 3}))),
        ("3-0", json.loads(entry("status_update", {"status": "started"}))),
        ("2-0", json.loads(entry("chunking_progress", {"documents_processed": 1}))),
    ]
    found = snapshot("op", Newest("5-0", entries), None)
    assert found is not None
    assert found["status"] == "started"
    assert found["progress"] == {"documents_processed": 3}
    assert found["last_event_id"] == "5-0"
    assert found["updated_at"] == "t-chunking_progress"
    assert snapshot("op", Newest(), None) is None
    state_only = snapshot("op", Newest(), {"type": "current_state", "data": {"status": "queued"}})
    assert state_only is not None
    assert state_only["status"] == "queued"


def test_web_all_is_sorted_and_matches_the_public_names() -> None:
    """`celery_progress_ws.web.__all__` is sorted and lists exactly the public names the package exports."""
    public = {
        name
        for name, value in vars(web).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert web.__all__ == sorted(web.__all__)
    assert set(web.__all__) == public


@pytest.mark.parametrize("name", ["ProgressManager", "create_progress_router"])
def test_fixed_public_api_is_exported(name: str) -> None:
    """The issue's fixed entry points are importable from celery_progress_ws.web."""
    assert name in web.__all__
