"""The wire format shared by both halves: entry types, statuses and their pydantic models.

A stream entry stores one JSON object in its ``message`` field::

    {"timestamp": "<ISO-8601 UTC>", "type": "<type>", "data": {...}}

Clients receive the same object with the stream entry ``id`` added.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TaskStatus(StrEnum):
    """Lifecycle states carried by ``status_update`` entries."""

    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

STATUS_UPDATE = "status_update"
CHUNKING_PROGRESS = "chunking_progress"
CURRENT_STATE = "current_state"
HISTORY_GAP = "history_gap"
"""Sent before the entries that follow a gap the server could not fill (trimmed, expired or lost entries)."""
OPERATION_UPDATE = "operation_update"
"""An entry of a user's feed: one of their operations was recorded or changed; ``data`` is its summary."""


class GapReason(StrEnum):
    """Why a ``history_gap`` was sent."""

    TRIMMED = "trimmed"
    """Entries after the client's last id were removed by the stream's max length."""
    STREAM_MISSING = "stream_missing"
    """The client resumed from an id but the stream has expired or was deleted."""
    REDIS_RESTARTED = "redis_restarted"
    """Redis restarted (or failed over) and lost entries the client had not received yet."""
    AHEAD_OF_STREAM = "ahead_of_stream"
    """The client's last id is after the stream's newest entry (an id the stream never issued): the stream follows
    from its start, so a client must forget its last id on this gap."""


def utc_now_iso() -> str:
    """The current time as an ISO-8601 UTC string, the format of ``timestamp``."""
    return datetime.now(UTC).isoformat()


class _OpenModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class StatusData(_OpenModel):
    """``data`` of a ``status_update`` entry."""

    status: TaskStatus
    task_name: str | None = None
    message: str | None = None
    error_type: str | None = Field(default=None, description="Exception class name, for `failed`.")
    error_message: str | None = Field(default=None, description="Exception text, for `failed`.")
    traceback: str | None = Field(default=None, description="Only when `include_traceback` is enabled.")


class ProgressData(_OpenModel):
    """``data`` of a ``chunking_progress`` entry, as written by ``report_progress``; extra fields allowed."""

    progress_percentage: float | None = Field(default=None, ge=0, le=100)
    documents_processed: float
    total_documents: float | None = None
    chunks_created: int | None = None
    current_document: str | None = None
    message: str | None = None
    rate: float | None = Field(default=None, description="Items per second since the first report.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds until current == total.")


class GapData(_OpenModel):
    """``data`` of a ``history_gap`` message."""

    reason: GapReason
    after_id: str | None = Field(description="The last id the client had; entries after it are missing.")
    resumes_at: str | None = Field(default=None, description="Id of the first entry delivered after the gap.")


class WireEntry(BaseModel):
    """Any entry as stored in a stream."""

    timestamp: str
    type: str
    data: dict[str, Any]


class StatusUpdateEntry(WireEntry):
    """A task lifecycle entry."""

    type: Literal["status_update"] = "status_update"
    data: StatusData  # type: ignore[assignment]


class ProgressEntry(WireEntry):
    """A progress entry written by ``report_progress``."""

    type: Literal["chunking_progress"] = "chunking_progress"
    data: ProgressData  # type: ignore[assignment]


class DeliveredEntry(WireEntry):
    """An entry as a client receives it: the wire entry plus its stream id."""

    id: str = Field(description="Stream entry id, e.g. `1732570000000-0`; resume with it as `last_event_id`.")


class GapMessage(BaseModel):
    """Told to a client before the entries that follow a gap."""

    type: Literal["history_gap"] = "history_gap"
    timestamp: str
    data: GapData


class OperationSummary(BaseModel):
    """What a user's operation index keeps of one operation, after its stream has expired too."""

    operation_id: str
    task_name: str | None = Field(default=None, description="The task's name, or the kind of a tracked canvas.")
    status: TaskStatus
    progress_percentage: float | None = Field(default=None, ge=0, le=100)
    message: str | None = None
    error_type: str | None = Field(default=None, description="Exception class name, for `failed`.")
    error_message: str | None = Field(default=None, description="Exception text, for `failed`.")
    queued_at: str | None = Field(default=None, description="ISO 8601; null when unknown.")
    started_at: str | None = Field(default=None, description="ISO 8601; null when unknown.")
    finished_at: str | None = Field(default=None, description="ISO 8601, set with the terminal status.")


class OperationUpdateEntry(DeliveredEntry):
    """An entry of a user's feed (``/me/ws``, ``/me/events``): an operation of theirs was recorded or changed."""

    type: Literal["operation_update"] = "operation_update"
    data: OperationSummary  # type: ignore[assignment]


class OperationsPage(BaseModel):
    """The answer of ``GET /me/operations``: summaries newest first, and the cursor of the next page."""

    operations: list[OperationSummary]
    next_cursor: str | None = Field(description="Pass as `?cursor=` for the next page; null on the last one.")


def wire_json_schema() -> dict[str, Any]:
    """JSON Schema of every message shape, for front-end developers."""
    from pydantic.json_schema import models_json_schema

    models: list[type[BaseModel]] = [
        WireEntry,
        DeliveredEntry,
        StatusUpdateEntry,
        ProgressEntry,
        GapMessage,
        OperationUpdateEntry,
        OperationsPage,
    ]
    _, schema = models_json_schema(
        [(model, "serialization") for model in models], title="celery-progress-ws wire format"
    )
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def wire_json_schema_text() -> str:
    """``wire_json_schema()`` as indented JSON text."""
    return json.dumps(wire_json_schema(), indent=2, sort_keys=True)
