"""How entries map to Redis: encoding, decoding, live announcements and stream ids."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum, IntEnum
from pathlib import PurePosixPath
from uuid import UUID

import pytest

from celery_progress_ws import EntryTooLarge, MalformedEntry
from celery_progress_ws._core.codec import (
    decode_entry,
    decode_fields,
    decode_live,
    delivered,
    encode_entry,
    is_valid_stream_id,
    make_entry,
    parse_stream_id,
)
from tests.support.worker_tasks import Named, Unprintable


def test_make_entry_has_the_seed_shape() -> None:
    """An entry is {timestamp, type, data} with an ISO-8601 UTC timestamp unless one is given."""
    entry = make_entry("tick", {"i": 1})
    assert list(entry) == ["timestamp", "type", "data"]
    assert entry["timestamp"].endswith("+00:00")
    assert make_entry("tick", {}, "2024-01-01T00:00:00+00:00")["timestamp"] == "2024-01-01T00:00:00+00:00"


def test_encode_is_compact_and_converts_by_the_rules() -> None:
    """Compact JSON; NaN/infinity become null, a set a list, an object without a JSON form its str()."""
    text = encode_entry({"type": "t", "data": {"nan": math.nan, "inf": [math.inf], "set": {1}, "obj": Named()}}, 1000)
    assert " " not in text
    assert json.loads(text)["data"] == {"nan": None, "inf": [None], "set": [1], "obj": "named!"}


class Color(Enum):
    RED = "red"
    PAIR = (1, datetime(2026, 1, 2, 3, 4, 5))


class Level(IntEnum):
    HIGH = 3


def wire(value: object) -> object:
    """How ``value`` reads on the wire as the field ``v`` of an entry."""
    return json.loads(encode_entry(make_entry("t", {"v": value}), 100_000))["data"]["v"]


def test_every_documented_conversion() -> None:
    """Each rule of _jsonsafe, as the wire shows it: kept, ISO 8601, enum values, str(), UTF-8 text, lists."""
    cases: list[tuple[object, object]] = [
        ("text", "text"),
        (7, 7),
        (True, True),
        (None, None),
        (2.5, 2.5),
        (math.nan, None),
        (-math.inf, None),
        (datetime(2026, 1, 1, 12, 30, tzinfo=UTC), "2026-01-01T12:30:00+00:00"),
        (datetime(2026, 1, 1), "2026-01-01T00:00:00"),
        (date(2026, 1, 2), "2026-01-02"),
        (time(8, 15), "08:15:00"),
        (Color.RED, "red"),
        (Color.PAIR, [1, "2026-01-02T03:04:05"]),
        (Level.HIGH, 3),
        (UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (Decimal("1.10"), "1.10"),
        (PurePosixPath("/data/a.pdf"), "/data/a.pdf"),
        (b"caf\xc3\xa9 \xff", "café \ufffd"),
        (bytearray(b"ok"), "ok"),
        ((1, (2, 3)), [1, [2, 3]]),
        ([math.inf, {"x": math.nan}], [None, {"x": None}]),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ["a", "b"]),
        ({1: "int", None: "none", False: "bool", 2.5: "float"}, {"1": "int", "null": "none", "false": "bool",
                                                                 "2.5": "float"}),
        (Named(), "named!"),
    ]  # fmt: skip
    assert [wire(value) for value, _ in cases] == [expected for _, expected in cases]


def test_a_set_that_cannot_be_sorted_keeps_its_iteration_order() -> None:
    """A set of items that cannot be ordered becomes a list of all of them, in the set's own order."""
    mixed = {1, "a", None}
    assert wire(mixed) == list(mixed)


def nested(levels: int) -> list[object]:
    """A list nested ``levels`` deep (itself included)."""
    value: list[object] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_nesting_is_capped() -> None:
    """A field may nest 32 containers; one more is a ValueError, however deep (no RecursionError)."""
    assert wire(nested(32)) == nested(32)
    for levels in (33, 100_000):
        with pytest.raises(ValueError, match="deeper than 32"):
            wire(nested(levels))


def test_encode_refuses_what_the_rules_refuse_naming_the_field() -> None:
    """A tuple key, a str() that raises and a circular structure raise TypeError/ValueError naming data.<field>;
    the same list twice in one value is no cycle."""
    shared = [1]
    assert wire({"a": shared, "b": [shared, shared]}) == {"a": [1], "b": [[1], [1]]}
    loop: list[object] = []
    loop.append({"again": loop})
    for value, error, where in (
        ({(1, 2): 3}, TypeError, r"data\.bad\[\(1, 2\)\]: a tuple key"),
        ({"inner": [{frozenset(): 1}]}, TypeError, r"data\.bad\.inner\[0\]\[frozenset\(\)\]"),
        (Unprintable(), TypeError, r"data\.bad: str\(\) of a Unprintable raised"),
        ([Unprintable()], TypeError, r"data\.bad\[0\]"),
        (loop, ValueError, r"data\.bad\[0\]\.again: circular reference"),
    ):
        with pytest.raises(error, match=where):
            encode_entry(make_entry("t", {"bad": value}), 10_000)


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
    assert decode_live(b'1-2 {"a": 1}') == ("1-2", '{"a": 1}')
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
