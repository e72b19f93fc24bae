"""What the server says about an operation besides its entries: ``current_state`` and the JSON snapshot."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from datetime import date, datetime
from enum import Enum
from typing import Any

from .._core.schemas import CHUNKING_PROGRESS, CURRENT_STATE, STATUS_UPDATE, utc_now_iso
from ._reads import Decoded, Newest

OperationGetter = Callable[[str], "Awaitable[object | None] | object | None"]
"""``getter(operation_id)``, sync or async: ``None`` (unknown), a mapping (sent as ``data`` as is), or an object.

An object is read by attribute: ``status``, ``type`` (sent as ``operation_type``), ``created_at``, ``started_at``,
``completed_at`` and ``error_message`` attributes, each optional; enums become their value, datetimes ISO-8601.
"""

_OBJECT_FIELDS = {
    "status": "status",
    "operation_type": "type",
    "created_at": "created_at",
    "started_at": "started_at",
    "completed_at": "completed_at",
    "error_message": "error_message",
}


async def current_state(getter: OperationGetter, operation_id: str) -> dict[str, Any] | None:
    """The ``current_state`` message for an operation, or ``None`` when the getter knows nothing about it."""
    found = getter(operation_id)
    if inspect.isawaitable(found):
        found = await found
    if found is None:
        return None
    if isinstance(found, Mapping):
        data = {str(key): value for key, value in found.items()}
    else:
        data = {name: _plain(getattr(found, attribute, None)) for name, attribute in _OBJECT_FIELDS.items()}
    return {"timestamp": utc_now_iso(), "type": CURRENT_STATE, "data": data}


def _plain(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def has_status_and_progress(entries: list[Decoded]) -> bool:
    """Whether a snapshot can stop reading: it has found the newest status and the newest progress."""
    types = {entry["type"] for _, entry in entries}
    return STATUS_UPDATE in types and CHUNKING_PROGRESS in types


def snapshot(operation_id: str, newest: Newest, state: dict[str, Any] | None) -> dict[str, Any] | None:
    """An operation's JSON snapshot from its newest entries (and ``current_state``); ``None`` if nothing is known."""
    if newest.newest_id is None and state is None:
        return None
    entries = [entry for _, entry in newest.entries]
    status = next((entry["data"] for entry in entries if entry["type"] == STATUS_UPDATE), None)
    progress = next((entry["data"] for entry in entries if entry["type"] == CHUNKING_PROGRESS), None)
    state_data = state["data"] if state is not None else None
    return {
        "operation_id": operation_id,
        "status": (status or state_data or {}).get("status"),
        "status_data": status,
        "progress": progress,
        "last_event_id": newest.newest_id,
        "updated_at": entries[0]["timestamp"] if entries else None,
        "current_state": state_data,
    }
