"""The bounded entry buffer: order, eviction by rank then age, refusal and put-back."""

from __future__ import annotations

import pytest

from celery_progress_ws._worker.buffer import EntryBuffer, Rank


def drain(buffer: EntryBuffer[str]) -> list[str]:
    items = []
    while (taken := buffer.pop()) is not None:
        items.append(taken[0])
    return items


def test_items_leave_in_arrival_order() -> None:
    """Below capacity the buffer is a plain FIFO."""
    buffer: EntryBuffer[str] = EntryBuffer(10)
    for item, rank in (("a", Rank.TERMINAL), ("b", Rank.PROGRESS), ("c", Rank.EVENT)):
        assert buffer.append(item, rank)
    assert len(buffer) == 3
    assert drain(buffer) == ["a", "b", "c"]
    assert buffer.pop() is None


def test_overflow_evicts_the_oldest_of_the_lowest_rank() -> None:
    """Progress goes first (oldest first), then events, and terminal statuses last."""
    buffer: EntryBuffer[str] = EntryBuffer(3)
    buffer.append("p1", Rank.PROGRESS)
    buffer.append("e1", Rank.EVENT)
    buffer.append("p2", Rank.PROGRESS)
    buffer.append("t1", Rank.TERMINAL)  # evicts p1
    buffer.append("t2", Rank.TERMINAL)  # evicts p2
    buffer.append("e2", Rank.EVENT)  # evicts e1
    assert buffer.dropped == 3
    assert drain(buffer) == ["t1", "t2", "e2"]


def test_an_item_outranked_by_everything_is_refused() -> None:
    """A progress entry does not push out terminal statuses; it is refused and counted."""
    buffer: EntryBuffer[str] = EntryBuffer(2)
    buffer.append("t1", Rank.TERMINAL)
    buffer.append("t2", Rank.TERMINAL)
    assert not buffer.append("p", Rank.PROGRESS)
    assert buffer.append("t3", Rank.TERMINAL)  # the oldest terminal status goes
    assert buffer.dropped == 2
    assert drain(buffer) == ["t2", "t3"]


def test_put_back_returns_an_item_to_the_front() -> None:
    """An item that failed to be written is retried first."""
    buffer: EntryBuffer[str] = EntryBuffer(3)
    buffer.append("a", Rank.EVENT)
    buffer.append("b", Rank.EVENT)
    taken = buffer.pop()
    assert taken == ("a", Rank.EVENT)
    buffer.put_back(*taken)
    assert drain(buffer) == ["a", "b"]


def test_put_back_into_a_full_buffer_keeps_the_bound() -> None:
    """If others filled the buffer meanwhile, putting an item back evicts by the same rule."""
    buffer: EntryBuffer[str] = EntryBuffer(2)
    buffer.append("p", Rank.PROGRESS)
    buffer.append("t", Rank.TERMINAL)
    buffer.put_back("first", Rank.EVENT)
    assert drain(buffer) == ["first", "t"]


def test_a_capacity_below_one_is_refused() -> None:
    """A buffer must hold at least one entry."""
    with pytest.raises(ValueError, match="capacity"):
        EntryBuffer(0)
