"""The shared wire schemas: statuses, models, and the exported JSON Schema matching what the worker writes."""

from __future__ import annotations

import json

import pytest
import redis

from celery_progress_ws import ProgressPublisher, ProgressSettings, TaskStatus, wire_json_schema, wire_json_schema_text
from celery_progress_ws._core.schemas import TERMINAL_STATUSES, ProgressEntry, StatusUpdateEntry
from tests.support.streams import read


def test_statuses_are_the_issues_six() -> None:
    """Six lifecycle statuses, three of them terminal."""
    assert [status.value for status in TaskStatus] == [
        "queued",
        "started",
        "retrying",
        "completed",
        "failed",
        "cancelled",
    ]
    assert {status.value for status in TERMINAL_STATUSES} == {"completed", "failed", "cancelled"}


def test_json_schema_describes_every_message_shape() -> None:
    """The exported schema is draft 2020-12 and defines entries, delivered entries, statuses, progress and gaps."""
    schema = wire_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"WireEntry", "DeliveredEntry", "StatusUpdateEntry", "ProgressEntry", "GapMessage"} <= set(schema["$defs"])
    assert json.loads(wire_json_schema_text()) == schema


@pytest.mark.integration
def test_what_the_publisher_writes_validates_against_the_models(
    publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A progress entry and a failed status written by the publisher parse as ProgressEntry / StatusUpdateEntry."""
    publisher.progress("op-schema", 3, 4, "nearly", {"chunks_created": 9, "current_document": "c.pdf", "x": 1})
    publisher.publish("op-schema", "status_update", {"status": "failed", "task_name": "t", "error_type": "E"})
    progress, status = read(redis_client, settings, "op-schema")
    parsed = ProgressEntry.model_validate(progress)
    assert parsed.data.progress_percentage == 75.0
    assert parsed.data.model_extra == {"x": 1}
    assert StatusUpdateEntry.model_validate(status).data.status is TaskStatus.FAILED
