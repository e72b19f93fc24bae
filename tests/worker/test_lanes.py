"""Lane routing: one lane per server, and an operation's entries never overtake each other when its slot moves."""

from __future__ import annotations

from redis.crc import key_slot

from celery_progress_ws._core.append import AppendCall
from celery_progress_ws._worker.buffer import Rank
from celery_progress_ws._worker.lanes import UNROUTED, Lanes


def call(key: str) -> AppendCall:
    return AppendCall([key], [])


def test_without_a_slot_map_every_call_shares_one_lane() -> None:
    """A single server (no routing) is one lane, whatever the keys."""
    lanes = Lanes(10)
    assert lanes.lane_for(call("a:{1}")) is lanes.lane_for(call("b:{2}"))
    assert lanes.lane_for(call("a:{1}")).name == UNROUTED


def test_calls_go_to_their_slots_primary_and_an_unknown_owner_to_the_unrouted_lane() -> None:
    """Each primary gets its own lane; a slot the map does not cover waits in the unrouted lane."""
    owners = {key_slot(b"x:{1}"): "n1:1", key_slot(b"x:{2}"): "n2:2"}
    lanes = Lanes(10)
    lanes.route_by(owners.get)
    assert lanes.lane_for(call("x:{1}")).name == "n1:1"
    assert lanes.lane_for(call("y:{2}")).name == "n2:2"  # same tag, same slot, same lane
    assert lanes.lane_for(call("x:{3}")).name == UNROUTED


def test_a_moved_slot_stays_in_its_lane_until_that_lane_is_empty() -> None:
    """After a failover the slot's next entries queue behind its older ones, then follow the new primary."""
    slot = key_slot(b"x:{1}")
    owners = {slot: "old:1"}
    lanes = Lanes(10)
    lanes.route_by(owners.get)
    old = lanes.hold(call("x:{1}"), Rank.EVENT)
    assert old is not None
    assert old.name == "old:1"
    owners[slot] = "new:2"
    assert lanes.hold(call("x:{1}"), Rank.EVENT) is old
    assert len(old.buffer) == 2
    while old.buffer.pop() is not None:
        pass
    lanes.emptied(old)
    assert lanes.lane_for(call("x:{1}")).name == "new:2"


def test_health_is_counted_per_lane_and_only_a_forgotten_lane_is_dropped() -> None:
    """``down`` counts lanes marked down; emptied lanes stay (with their node's connection) until forgotten."""
    owners = {key_slot(b"x:{1}"): "n1:1", key_slot(b"x:{2}"): "n2:2"}
    lanes = Lanes(10)
    lanes.route_by(owners.get)
    first, second = lanes.lane_for(call("x:{1}")), lanes.lane_for(call("x:{2}"))
    assert lanes.mark(first, False)
    assert not lanes.mark(first, False)
    assert lanes.down == 1
    lanes.emptied(first)
    lanes.emptied(second)
    assert {lane.name for lane in lanes} == {UNROUTED, "n1:1", "n2:2"}
    lanes.forget(first)
    assert lanes.down == 0
    assert {lane.name for lane in lanes} == {UNROUTED, "n2:2"}


def test_each_lane_is_bounded_on_its_own() -> None:
    """A full lane makes room within itself (the older progress entry goes); another lane keeps its own room."""
    owners = {key_slot(b"x:{1}"): "n1:1", key_slot(b"x:{2}"): "n2:2"}
    lanes = Lanes(1)
    lanes.route_by(owners.get)
    assert lanes.hold(call("x:{1}"), Rank.PROGRESS) is not None
    assert lanes.hold(call("x:{1}"), Rank.PROGRESS) is not None  # evicts the older progress entry
    assert lanes.dropped() == (1, 1)
    assert lanes.hold(call("x:{2}"), Rank.PROGRESS) is not None
    assert lanes.pending() == 2
