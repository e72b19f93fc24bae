"""What both stream readers share (`_core.streams`): positions, the gap rule, and stream metadata from XINFO."""

from __future__ import annotations

import pytest
import redis

from celery_progress_ws import ProgressSettings
from celery_progress_ws._core.codec import StreamId
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws._core.schemas import GapReason
from celery_progress_ws._core.streams import Position, StreamInfo, gap_reason, stream_info


def info(
    length: int,
    first: StreamId | None,
    added: int | None,
    max_deleted: StreamId | None = None,
    last: str | None = None,
) -> StreamInfo:
    newest = (last, "{}") if last is not None else None
    return StreamInfo(length=length, first_id=first, max_deleted_id=max_deleted, entries_added=added, last=newest)


@pytest.mark.parametrize(
    ("stream", "position", "restart_lost", "reason"),
    [
        (None, (5, 0), False, GapReason.STREAM_MISSING),
        (None, (5, 0), True, GapReason.REDIS_RESTARTED),
        (None, None, False, None),
        (info(3, (4, 0), 3), (5, 0), False, None),
        (info(3, (4, 0), 3), (1, 0), False, None),
        (info(3, (4, 0), 6), (1, 0), False, GapReason.TRIMMED),
        (info(3, (4, 0), 6), (4, 0), False, None),
        (info(3, (4, 0), None), (1, 0), False, GapReason.TRIMMED),
        (info(3, (4, 0), 3, max_deleted=(9, 0)), (5, 0), False, GapReason.TRIMMED),
        (info(3, (4, 0), 6), None, False, GapReason.TRIMMED),
        (info(3, (4, 0), 3), None, False, None),
        (info(3, (4, 0), 3, last="6-0"), (7, 0), False, GapReason.AHEAD_OF_STREAM),
        (info(3, (4, 0), 3, last="6-0"), (6, 0), False, None),
        (info(3, (4, 0), 3, last="6-0"), (7, 0), True, GapReason.REDIS_RESTARTED),
        (info(3, (4, 0), 6, last="6-0"), (1, 0), True, GapReason.REDIS_RESTARTED),
    ],
)
def test_gap_reason(
    stream: StreamInfo | None, position: StreamId | None, restart_lost: bool, reason: GapReason | None
) -> None:
    """Entries lost in a restart, a missing stream, a position the stream never issued and trimming before the first
    entry are gaps; nothing else is (a reader without a position misses only what was trimmed)."""
    assert gap_reason(stream, position, restart_lost=restart_lost) is reason


def test_position_admits_only_newer_entries_and_can_start_over() -> None:
    """The exactly-once gate: an id at or before the position is refused; `forget` starts from the beginning."""
    position = Position("5-0")
    assert (position.key, position.admits((5, 0)), position.admits((5, 1))) == ((5, 0), False, True)
    position.advance("6-2", (6, 2))
    assert (position.last_id, position.admits((6, 1))) == ("6-2", False)
    position.forget()
    assert (position.last_id, position.key, position.admits((0, 1))) == (None, None, True)


@pytest.mark.parametrize(
    ("last_id", "read_under", "now", "restarted"),
    [
        ("5-0", "a", "b", True),
        ("5-0", "a", "a", False),
        ("5-0", None, "b", False),
        ("5-0", "a", None, False),
        (None, "a", "b", False),
    ],
)
def test_a_position_needs_a_restart_check_only_when_read_under_another_known_run(
    last_id: str | None, read_under: str | None, now: str | None, restarted: bool
) -> None:
    """Only a position with an entry, read under a known run_id other than the current one, asks for the lookup."""
    assert Position(last_id, run_id=read_under).restarted(now) is restarted


@pytest.mark.parametrize("decode_responses", [True, False])
def test_stream_info_reads_redis_xinfo_with_or_without_decoded_responses(
    redis_url: str, settings: ProgressSettings, decode_responses: bool
) -> None:
    """Length, first and newest entry, trimming evidence and entries-added come out the same for both client kinds."""
    client = redis.Redis.from_url(redis_url, decode_responses=decode_responses)
    stream = KeySpace(settings.key_prefix).stream("op")
    try:
        ids = [client.xadd(stream, {"message": f'{{"n": {n}}}'}) for n in range(4)]
        client.xtrim(stream, maxlen=2, approximate=False)
        client.xadd(stream, {"other": "x"})
        found = stream_info(client.xinfo_stream(stream))
    finally:
        client.delete(stream)
        client.close()
    text = [entry_id.decode() if isinstance(entry_id, bytes) else entry_id for entry_id in ids]
    assert (found.length, found.entries_added, found.first_id) == (3, 5, tuple(map(int, text[2].split("-"))))
    assert found.last is not None
    assert found.last[1] is None  # the newest entry has no `message` field
    assert found.last_id is not None
    assert found.last_id > tuple(map(int, text[3].split("-")))
    assert gap_reason(found, (0, 1)) is GapReason.TRIMMED
