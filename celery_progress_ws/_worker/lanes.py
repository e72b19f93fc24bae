"""Write lanes: one ordered buffer per Redis server that takes writes, so one unreachable shard holds back only its own
operations' entries.

A single server (or a Sentinel service's master) is one lane. On a cluster each primary is a lane, chosen by the slot
of the call's first key, which every key of one operation shares. A slot sticks to its lane while that lane holds
entries: after a failover or a slot migration new entries of an operation queue behind its older ones, never around
them, so each operation's entries still reach Redis in the order they were made.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import SlotNotCoveredError

from .._core.append import WriteCall
from .buffer import EntryBuffer, Rank

UNROUTED = ""
"""The lane of a single server, and on a cluster of calls made before the slot map is known."""

SlotOwner = Callable[[int], str | None]
"""The name of the primary serving a hash slot, ``None`` if unknown; must not do I/O."""


class Lane:
    """The buffer and health of writes to one server; ``io_lock`` serialises its writes (and guards ``direct``)."""

    __slots__ = ("buffer", "direct", "healthy", "io_lock", "name", "retry_at", "slots")

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.buffer: EntryBuffer[WriteCall] = EntryBuffer(capacity)
        self.healthy = True
        self.retry_at = 0.0
        self.io_lock = threading.Lock()
        self.slots: set[int] = set()
        """Hash slots with entries in this lane (cluster only): their next entries must queue here too."""
        self.direct: tuple[int, Any, Any] | None = None
        """The process id, runner and connection of this cluster node's own connection, made by the writer."""


class Lanes:
    """The lanes of one writer and the slot -> lane routing; not thread-safe, the writer's lock guards it."""

    __slots__ = ("_by_name", "_by_slot", "_capacity", "_owner", "down")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._by_name: dict[str, Lane] = {UNROUTED: Lane(UNROUTED, capacity)}
        self._by_slot: dict[int, Lane] = {}
        self._owner: SlotOwner | None = None
        self.down = 0
        """How many lanes are marked down."""

    def route_by(self, owner: SlotOwner | None) -> None:
        """Route calls by their slot's primary from now on (a cluster), or all to one lane (``None``)."""
        self._owner = owner

    def lane_for(self, call: WriteCall) -> Lane:
        """The lane ``call`` belongs in: its slot's while that one holds entries, else its slot's primary's."""
        owner = self._owner
        if owner is None:
            return self._by_name[UNROUTED]
        slot = key_slot(call.keys[0].encode())
        lane = self._by_slot.get(slot)
        if lane is None:
            name = owner(slot) or UNROUTED
            lane = self._by_name.get(name)
            if lane is None:
                lane = self._by_name[name] = Lane(name, self._capacity)
        return lane

    def emptied(self, lane: Lane) -> None:
        """``lane`` has no entries left: its slots route anew (the lane stays, with its node's connection)."""
        for slot in lane.slots:
            if self._by_slot.get(slot) is lane:
                del self._by_slot[slot]
        lane.slots.clear()

    def forget(self, lane: Lane) -> None:
        """Drop an empty lane whose server no longer serves any slot (a failed-over primary)."""
        self.mark(lane, True)
        self.emptied(lane)
        if lane.name != UNROUTED:
            self._by_name.pop(lane.name, None)

    def mark(self, lane: Lane, healthy: bool) -> bool:
        """Set ``lane``'s health; ``True`` if it changed."""
        if lane.healthy is healthy:
            return False
        lane.healthy = healthy
        self.down += -1 if healthy else 1
        return True

    def __iter__(self) -> Iterator[Lane]:
        return iter(list(self._by_name.values()))

    def pending(self) -> int:
        """Entries waiting in all lanes."""
        return sum(len(lane.buffer) for lane in self._by_name.values())

    def dropped(self) -> tuple[int, int]:
        """Entries evicted or refused: since the last ``reset_dropped``, and in all."""
        lanes = self._by_name.values()
        return sum(lane.buffer.dropped for lane in lanes), sum(lane.buffer.dropped_total for lane in lanes)

    def hold(self, call: WriteCall, rank: Rank) -> Lane | None:
        """Queue ``call`` in its lane; its lane, or ``None`` if it was refused (the lane is full of weightier ones)."""
        lane = self.lane_for(call)
        if not lane.buffer.append(call, rank):
            return None
        if self._owner is not None:
            slot = key_slot(call.keys[0].encode())
            lane.slots.add(slot)
            self._by_slot[slot] = lane
        return lane


def slot_owner(client: RedisCluster) -> SlotOwner:
    """The primary serving a slot, as ``client``'s slot map says now (no I/O)."""
    nodes = client.nodes_manager

    def owner(slot: int) -> str | None:
        try:
            return str(nodes.get_node_from_slot(slot).name)
        except (SlotNotCoveredError, IndexError, KeyError):  # the map has no primary for it now
            return None

    return owner
