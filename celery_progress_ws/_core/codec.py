"""How entries map to Redis: JSON encoding, decoding with validation, live announcements and stream ids."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import EntryTooLarge, MalformedEntry
from .jsonsafe import json_safe, json_safe_fields
from .keys import ENTRY_TYPE_RULE, is_valid_entry_type
from .schemas import utc_now_iso

MESSAGE_FIELD = "message"
"""The stream field that holds an entry's JSON."""

LIVE_SEPARATOR = " "
"""Separates the stream id from the entry JSON in a live pub/sub announcement."""

StreamId = tuple[int, int]

# Built once: json.dumps() with non-default options constructs a new encoder on every call. Values reach it converted
# by json_safe (no NaN, no cycles, nothing json cannot write), so it checks neither.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False).encode


def make_entry(entry_type: str, data: dict[str, Any], timestamp: str | None = None) -> dict[str, Any]:
    """Build a wire entry ``{"timestamp", "type", "data"}``."""
    return {"timestamp": timestamp or utc_now_iso(), "type": entry_type, "data": data}


def encode_entry(entry: dict[str, Any], max_bytes: int) -> str:
    """Encode an entry to compact JSON, its values converted by the rules of ``jsonsafe`` (``data`` field by field).

    Raises ``TypeError``/``ValueError`` naming the field of a value the rules refuse, and ``EntryTooLarge`` when the
    result exceeds ``max_bytes`` (UTF-8).
    """
    safe: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "data" and isinstance(value, Mapping):
            safe[key] = json_safe_fields(value, "data.")
        else:
            safe[key] = value if value.__class__ is str else json_safe(value, key)
    text = _encode(safe)
    size = len(text) if text.isascii() else len(text.encode())
    if size > max_bytes:
        raise EntryTooLarge(f"encoded entry is {size} bytes; the limit is {max_bytes}")
    return text


def decode_entry(message: str | bytes) -> dict[str, Any]:
    """Decode a stored entry's JSON and check its shape; raise ``MalformedEntry`` if it is not an entry."""
    try:
        entry = json.loads(message)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEntry(f"entry is not JSON: {exc}") from exc
    if not isinstance(entry, dict):
        raise MalformedEntry("entry is not a JSON object")
    if not isinstance(entry.get("type"), str) or not isinstance(entry.get("data"), dict):
        raise MalformedEntry("entry lacks a string `type` or an object `data`")
    if not is_valid_entry_type(entry["type"]):
        raise MalformedEntry(f"entry type {entry['type'][:80]!r} is not {ENTRY_TYPE_RULE}")
    if not isinstance(entry.get("timestamp"), str):
        raise MalformedEntry("entry lacks a string `timestamp`")
    return entry


def decode_fields(fields: dict[Any, Any]) -> dict[str, Any]:
    """Decode the field map of one stream entry (bytes or str keys)."""
    message = fields.get(MESSAGE_FIELD, fields.get(MESSAGE_FIELD.encode()))
    if message is None:
        raise MalformedEntry(f"entry has no `{MESSAGE_FIELD}` field")
    return decode_entry(message)


def delivered(entry_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The message a client receives: the entry with its stream id first."""
    return {"id": entry_id, **entry}


def decode_live(payload: str | bytes) -> tuple[str, str]:
    """Split a live announcement into ``(stream id, entry JSON)``; ``MalformedEntry`` if it is not one."""
    try:
        text = payload.decode() if isinstance(payload, bytes) else payload
    except UnicodeDecodeError as exc:
        raise MalformedEntry(f"live announcement is not UTF-8: {exc}") from exc
    entry_id, separator, message = text.partition(LIVE_SEPARATOR)
    if not separator:
        raise MalformedEntry("live announcement has no separator")
    parse_stream_id(entry_id)
    return entry_id, message


def parse_stream_id(entry_id: str | bytes) -> StreamId:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; ``MalformedEntry`` for anything else."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    millis, separator, sequence = text.partition("-")
    if not separator or not _is_number(millis) or not _is_number(sequence):
        raise MalformedEntry(f"not a stream id: {text!r}")
    return int(millis), int(sequence)


def is_valid_stream_id(entry_id: str) -> bool:
    """Whether ``entry_id`` is a stream id entries can follow (used to validate client-supplied resume ids).

    The greatest id is refused: nothing can follow it, and Redis rejects it as an exclusive range start.
    """
    millis, separator, sequence = entry_id.partition("-")
    if not separator or not _is_number(millis) or not _is_number(sequence) or len(entry_id) > 41:
        return False
    return int(millis) < _ID_PART_LIMIT and int(sequence) < _ID_PART_LIMIT and entry_id != _MAX_ID


_ID_PART_LIMIT = 2**64
"""Both halves of a stream id are unsigned 64-bit integers."""
_MAX_ID = f"{_ID_PART_LIMIT - 1}-{_ID_PART_LIMIT - 1}"


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts characters such as ``²`` that ``int`` and Redis reject."""
    return text.isascii() and text.isdigit()
