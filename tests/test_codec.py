"""How entries map to Redis: encoding, decoding, live announcements, stream ids, terminal status and TTLs."""

from __future__ import annotations

import json
import math

import pytest

from celery_progress_ws import EntryTooLarge, MalformedEntry, ProgressSettings, TaskStatus
from celery_progress_ws._codec import (
    decode_entry,
    decode_fields,
    decode_live,
    delivered,
    encode_entry,
    encode_live,
    is_valid_stream_id,
    make_entry,
    parse_stream_id,
    terminal_status,
    ttl_for,
)


def test_make_entry_has_the_seed_shape() -> None:
    """An entry is {timestamp, type, data} with an ISO-8601 UTC timestamp unless one is given."""
    entry = make_entry("tick", {"i": 1})
    assert list(entry) == ["timestamp", "type", "data"]
    assert entry["timestamp"].endswith("+00:00")
    assert make_entry("tick", {}, "2024-01-01T00:00:00+00:00")["timestamp"] == "2024-01-01T00:00:00+00:00"


def test_encode_is_compact_and_tolerant() -> None:
    """Compact JSON; NaN/infinity become null; values JSON cannot represent become their str()."""
    text = encode_entry({"type": "t", "data": {"nan": math.nan, "inf": [math.inf], "set": {1}}}, 1000)
    assert " " not in text
    assert json.loads(text)["data"] == {"nan": None, "inf": [None], "set": "{1}"}


def test_encode_enforces_the_size_limit_in_utf8_bytes() -> None:
    """The limit counts encoded bytes, so non-ASCII text is measured correctly."""
    entry = {"data": "é" * 10}
    assert encode_entry(entry, 100)
    with pytest.raises(EntryTooLarge):
        encode_entry(entry, len(json.dumps(entry, ensure_ascii=False).encode()) - 1)


@pytest.mark.parametrize(
    "message", ["not json", "[1]", '{"type": "t", "data": {}}', '{"timestamp": "x", "type": 1, "data": {}}', b"\xff"]
)
def test_decode_refuses_what_is_not_an_entry(message: str | bytes) -> None:
    """Non-JSON, non-objects and objects missing a string type/timestamp or an object data are MalformedEntry."""
    with pytest.raises(MalformedEntry):
        decode_entry(message)


def test_decode_fields_accepts_bytes_or_str_keys() -> None:
    """A stream entry's field map decodes whether or not the client decodes responses."""
    message = json.dumps(make_entry("tick", {}))
    assert decode_fields({b"message": message.encode()})["type"] == "tick"
    assert decode_fields({"message": message})["type"] == "tick"
    with pytest.raises(MalformedEntry):
        decode_fields({"other": message})


def test_live_announcements_round_trip() -> None:
    """A live announcement is the stream id, a space and the JSON; anything else is MalformedEntry."""
    assert decode_live(encode_live("1-2", '{"a": 1}').encode()) == ("1-2", '{"a": 1}')
    for bad in ("no-separator", "x-1 {}", b"\xff\xfe 1"):
        with pytest.raises(MalformedEntry):
            decode_live(bad)
    assert delivered("1-2", {"type": "t"}) == {"id": "1-2", "type": "t"}


def test_stream_ids() -> None:
    """Stream ids parse to (millis, sequence); client-supplied ones are validated strictly."""
    assert parse_stream_id(b"1700000000000-3") == (1700000000000, 3)
    for bad in ("1700000000000", "a-1", "1-²"):
        with pytest.raises(MalformedEntry):
            parse_stream_id(bad)
        assert not is_valid_stream_id(bad)
    assert is_valid_stream_id("0-0")
    assert not is_valid_stream_id(f"{2**64}-0")
    assert is_valid_stream_id(f"{2**64 - 1}-{2**64 - 2}")
    assert not is_valid_stream_id(f"{2**64 - 1}-{2**64 - 1}")  # nothing follows it: no exclusive range start


def test_terminal_status() -> None:
    """Only completed, failed and cancelled status entries end an operation."""
    assert terminal_status({"type": "status_update", "data": {"status": "failed"}}) is TaskStatus.FAILED
    assert terminal_status({"type": "status_update", "data": {"status": "started"}}) is None
    assert terminal_status({"type": "tick", "data": {"status": "completed"}}) is None


def test_ttl_follows_the_seed_policy_and_the_settings() -> None:
    """86400 s while running, 300 s after completed/cancelled, 60 s after failed; each configurable."""
    settings = ProgressSettings(stream_ttl_seconds=10, completed_ttl_seconds=5, failed_ttl_seconds=2)
    assert ttl_for(ProgressSettings(), "chunking_progress", {}) == 86400
    assert ttl_for(settings, "status_update", {"status": "started"}) == 10
    assert ttl_for(settings, "status_update", {"status": "cancelled"}) == 5
    assert ttl_for(settings, "status_update", {"status": "failed"}) == 2
