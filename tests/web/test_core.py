"""The delivery core in-process: outbox, subscriber, hub (over an in-memory source) and registry."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from celery_progress_ws._core.errors import ServerLimitExceeded, UserLimitExceeded
from celery_progress_ws._core.schemas import GapReason
from celery_progress_ws._core.streams import Topic, TopicKind
from celery_progress_ws.web._hub import Hub
from celery_progress_ws.web._outbox import Outbox, Outgoing
from celery_progress_ws.web._registry import ConnectionKey, ConnectionRegistry
from celery_progress_ws.web._subscriber import Subscriber
from tests.support.fakes import FakeSource

TOPIC = Topic(TopicKind.OPERATION, "op-1")


def stored(number: int, *, terminal: bool = False) -> Outgoing:
    entry_id = f"{number}-0"
    entry = {"timestamp": "t", "type": "note", "data": {"n": number}}
    return Outgoing.stored(entry_id, (number, 0), entry, terminal=terminal)


def drained(outbox: Outbox) -> list[Outgoing]:
    items = list(outbox._items)
    outbox._items.clear()
    return items


# -- outbox ---------------------------------------------------------------------------------------------------------


async def test_outbox_close_drains_first_and_abort_drops() -> None:
    """`close` ends the connection after the queued messages; `abort` ends it at once, dropping them."""
    graceful = Outbox(4)
    assert graceful.offer(stored(1))
    graceful.close(1000, "done")
    assert not graceful.offer(stored(2))
    assert (await graceful.get()) is not None
    assert await graceful.get() is None
    abrupt = Outbox(4)
    abrupt.offer(stored(1))
    abrupt.abort(1013, "slow")
    assert await abrupt.get() is None
    assert (abrupt.close_code, abrupt.close_reason) == (1013, "slow")


async def test_outbox_put_waits_for_room_and_offer_refuses_when_full() -> None:
    """`offer` refuses a full outbox; `put` waits until the sender takes something, or the connection ends."""
    outbox = Outbox(1)
    assert outbox.offer(stored(1))
    assert not outbox.offer(stored(2))
    waiting = asyncio.create_task(outbox.put(stored(2)))
    await asyncio.sleep(0)
    assert not waiting.done()
    await outbox.get()
    assert await waiting
    blocked = asyncio.create_task(outbox.put(stored(3)))
    await asyncio.sleep(0)
    outbox.abort(1001, "bye")
    assert not await blocked


def test_outgoing_is_serialized_once_with_id_first_and_sse_framing() -> None:
    """A stored entry's text starts with its id; its SSE frame has id, event and data lines."""
    item = stored(7)
    assert item.text.startswith('{"id":"7-0",')
    assert item.sse == f"id: 7-0\nevent: note\ndata: {item.text}\n\n".encode()
    assert item.sse is item.sse
    assert Outgoing.unstored({"type": "current_state", "data": {}}).sse.startswith(b"event: current_state\n")


# -- subscriber -----------------------------------------------------------------------------------------------------


async def test_subscriber_buffers_live_entries_while_catching_up_and_delivers_each_once() -> None:
    """Live entries wait during catch-up; history and buffer overlap, yet each id is delivered once, in order."""
    subscriber = Subscriber(TOPIC, capacity=10)
    subscriber.offer_live(stored(3))
    subscriber.offer_live(stored(4))
    for number in (1, 2, 3):
        assert await subscriber.deliver_history(stored(number))
    assert await subscriber.end_catch_up()
    subscriber.offer_live(stored(4))
    subscriber.offer_live(stored(5))
    assert [item.entry_id for item in drained(subscriber.outbox)] == ["1-0", "2-0", "3-0", "4-0", "5-0"]


async def test_subscriber_resuming_skips_what_it_had() -> None:
    """A subscriber created with last_event_id drops every entry at or before it."""
    subscriber = Subscriber(TOPIC, capacity=10, last_event_id="2-0")
    for number in (1, 2, 3):
        await subscriber.deliver_history(stored(number))
    assert [item.entry_id for item in drained(subscriber.outbox)] == ["3-0"]


async def test_live_overflow_closes_as_too_slow() -> None:
    """A live entry that finds the outbox full aborts the connection with 1013."""
    subscriber = Subscriber(TOPIC, capacity=2)
    assert await subscriber.end_catch_up()
    for number in (1, 2, 3):
        subscriber.offer_live(stored(number))
    assert subscriber.outbox.aborted
    assert (subscriber.outbox.close_code, subscriber.outbox.close_reason) == (1013, "Client too slow")


async def test_buffer_overflow_during_slow_history_asks_for_another_round() -> None:
    """Too many live entries during catch-up (outbox not full) drop the buffer and request a re-read, not a close."""
    subscriber = Subscriber(TOPIC, capacity=2)
    for number in (5, 6, 7):
        subscriber.offer_live(stored(number))
    assert not subscriber.closed
    assert not await subscriber.end_catch_up()
    assert subscriber.catching_up


async def test_after_a_buffer_overflow_nothing_newer_is_released_before_the_re_read() -> None:
    """Once the live buffer overflowed, later live entries are not buffered either: the re-read brings all in order."""
    subscriber = Subscriber(TOPIC, capacity=2)
    for number in (5, 6, 7, 8):
        subscriber.offer_live(stored(number))
    assert not await subscriber.end_catch_up()
    for number in (5, 6):
        assert await subscriber.deliver_history(stored(number))
    assert [item.entry_id for item in drained(subscriber.outbox)] == ["5-0", "6-0"]
    for number in (7, 8):
        assert await subscriber.deliver_history(stored(number))
    assert await subscriber.end_catch_up()
    assert [item.entry_id for item in drained(subscriber.outbox)] == ["7-0", "8-0"]


async def test_gap_message_comes_before_the_next_entry_with_its_id() -> None:
    """A noted gap is delivered right before the next entry, naming the last id and where delivery resumes."""
    subscriber = Subscriber(TOPIC, capacity=10, last_event_id="2-0")
    subscriber.note_gap(GapReason.TRIMMED)
    await subscriber.deliver_history(stored(9))
    gap, entry = (json.loads(item.text) for item in drained(subscriber.outbox))
    assert gap["type"] == "history_gap"
    assert gap["data"] == {"reason": "trimmed", "after_id": "2-0", "resumes_at": "9-0"}
    assert entry["id"] == "9-0"


async def test_terminal_entry_closes_after_it_is_sent() -> None:
    """Queuing a terminal entry closes the outbox gracefully with 1000 "Operation completed"; later ones are ignored."""
    subscriber = Subscriber(TOPIC, capacity=10)
    assert await subscriber.end_catch_up()
    subscriber.offer_live(stored(1, terminal=True))
    subscriber.offer_live(stored(2))
    assert (subscriber.outbox.close_code, subscriber.outbox.close_reason) == (1000, "Operation completed")
    assert [item.entry_id for item in drained(subscriber.outbox)] == ["1-0"]


# -- hub over the fake source ---------------------------------------------------------------------------------------


async def consume(subscriber: Subscriber) -> list[str]:
    """Everything a sender would send, until the connection ends."""
    received = []
    while (item := await subscriber.outbox.get()) is not None:
        received.append(item.entry_id or item.type)
    return received


async def next_id(subscriber: Subscriber) -> str | None:
    """The id (or type) of the next message the subscriber's sender would send."""
    item = await subscriber.outbox.get()
    return None if item is None else item.entry_id or item.type


def after(ids: list[str], last: str | None) -> list[str]:
    return ids if last is None else ids[ids.index(last) + 1 :]


@pytest.mark.parametrize("seed", range(30))
async def test_hub_delivers_every_entry_exactly_once_in_order_under_concurrent_writes(seed: int) -> None:
    """Subscribers joining at random moments, resuming from random ids, across an outage: none misses or repeats."""
    rng = random.Random(seed)
    source = FakeSource()
    hub = Hub(source, history_batch=rng.choice([1, 3, 50]), max_entry_bytes=10_000, retry_max_seconds=0.01)
    source.listener = hub
    written: list[str] = []
    readers: list[tuple[str | None, asyncio.Task[list[str]]]] = []
    outage_at = rng.randrange(20, 120)

    for step in range(150):
        written.append(source.append(TOPIC))
        if rng.random() < 0.06:
            resume = rng.choice([None, rng.choice(written)])
            subscriber = Subscriber(TOPIC, capacity=500, last_event_id=resume)
            hub.attach(subscriber)
            readers.append((resume, asyncio.create_task(consume(subscriber))))
        if step == outage_at:
            source.go_down()
        if step == outage_at + 10:
            source.come_back()
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
    written.append(source.append(TOPIC, "status_update", {"status": "completed"}))

    assert readers
    for resume, reader in readers:
        async with asyncio.timeout(5):
            assert await reader == after(written, resume)


async def test_hub_tells_resuming_subscribers_about_trimmed_entries() -> None:
    """Resuming from an id that was trimmed away yields a `trimmed` gap before the entries that remain."""
    source = FakeSource()
    hub = Hub(source, history_batch=10, max_entry_bytes=10_000, retry_max_seconds=0.01)
    source.listener = hub
    ids = [source.append(TOPIC) for _ in range(6)]
    source.trim(TOPIC, keep=3)
    subscriber = Subscriber(TOPIC, capacity=10, last_event_id=ids[1])
    hub.attach(subscriber)
    source.append(TOPIC, "status_update", {"status": "completed"})
    received = await consume(subscriber)
    assert received[0] == "history_gap"
    assert received[1:4] == ids[3:]


async def test_hub_tells_subscribers_when_the_store_restarted() -> None:
    """After a restart that lost the stream, each subscriber gets a `redis_restarted` gap, then what follows."""
    source = FakeSource()
    hub = Hub(source, history_batch=10, max_entry_bytes=10_000, retry_max_seconds=0.01)
    source.listener = hub
    first = source.append(TOPIC)
    subscriber = Subscriber(TOPIC, capacity=10)
    hub.attach(subscriber)
    assert await next_id(subscriber) == first
    source.go_down()
    source.streams.clear()
    source.come_back(restarted=True)
    last = source.append(TOPIC, "status_update", {"status": "completed"})
    assert await consume(subscriber) == ["history_gap", last]


async def test_hub_sends_no_gap_after_a_restart_that_kept_the_stream() -> None:
    """A restart (new run id) that kept the subscriber's entry (AOF, a replica) lost nothing: no gap, what follows."""
    source = FakeSource()
    hub = Hub(source, history_batch=10, max_entry_bytes=10_000, retry_max_seconds=0.01)
    source.listener = hub
    first = source.append(TOPIC)
    subscriber = Subscriber(TOPIC, capacity=10)
    hub.attach(subscriber)
    assert await next_id(subscriber) == first
    source.go_down()
    source.come_back(restarted=True)
    last = source.append(TOPIC, "status_update", {"status": "completed"})
    assert await consume(subscriber) == [last]


async def test_hub_reports_a_restart_that_lost_the_subscribers_entry_though_the_stream_goes_on() -> None:
    """A restart back to an older copy of the stream gives `redis_restarted`; what the subscriber had is not resent."""
    source = FakeSource()
    hub = Hub(source, history_batch=10, max_entry_bytes=10_000, retry_max_seconds=0.01)
    source.listener = hub
    ids = [source.append(TOPIC) for _ in range(3)]
    subscriber = Subscriber(TOPIC, capacity=10)
    hub.attach(subscriber)
    assert [await next_id(subscriber) for _ in ids] == ids
    source.go_down()
    del source.streams[TOPIC][1:]  # the restarted store had only saved the first entry
    source.come_back(restarted=True)
    gap = await subscriber.outbox.get()  # sent as the catch-up ends: the stream has nothing after the position
    assert gap is not None
    assert json.loads(gap.text)["data"] == {"reason": "redis_restarted", "after_id": ids[-1], "resumes_at": None}
    last = source.append(TOPIC, "status_update", {"status": "completed"})
    assert await consume(subscriber) == [last]


async def test_hub_skips_malformed_entries() -> None:
    """Entries that are not JSON objects of the right shape, too big, or without a message are skipped."""
    source = FakeSource()
    hub = Hub(source, history_batch=10, max_entry_bytes=200, retry_max_seconds=0.01)
    source.listener = hub
    source.append_raw(TOPIC, "1-0", "not json")
    source.append_raw(TOPIC, "2-0", None)
    source.append_raw(TOPIC, "3-0", json.dumps({"timestamp": "t", "type": "x", "data": {"big": "y" * 300}}))
    source.append_raw(TOPIC, "4-0", json.dumps({"type": "x"}))
    good = source.append(TOPIC, "status_update", {"status": "cancelled"})
    subscriber = Subscriber(TOPIC, capacity=10)
    hub.attach(subscriber)
    assert await consume(subscriber) == [good]


async def test_hub_keeps_live_order_behind_a_terminal_entry_it_confirms_and_drops_an_unconfirmed_one() -> None:
    """A live terminal entry is read back before it is delivered, entries announced after it wait behind it, and a
    terminal announcement the stream does not have is not delivered at all."""
    source = FakeSource()
    hub = Hub(source, history_batch=10, max_entry_bytes=10_000, retry_max_seconds=0.01)
    source.listener = hub
    subscriber = Subscriber(TOPIC, capacity=10)
    hub.attach(subscriber)
    first = source.append(TOPIC)
    assert await next_id(subscriber) == first
    completed = json.dumps({"timestamp": "t", "type": "status_update", "data": {"status": "completed"}})
    hub.on_entry(TOPIC, "1001-5", completed)  # announced, never stored
    source.append_raw(TOPIC, "1002-0", completed)
    source.append_raw(TOPIC, "1003-0", json.dumps({"timestamp": "t", "type": "note", "data": {}}))
    assert await consume(subscriber) == ["1002-0"]


async def test_hub_unsubscribes_a_topic_when_its_last_subscriber_leaves() -> None:
    """The live channel stays subscribed while anyone watches and is dropped after the last one leaves."""
    source = FakeSource()
    hub = Hub(source, history_batch=10, max_entry_bytes=10_000, retry_max_seconds=0.01)
    source.listener = hub
    one, two = Subscriber(TOPIC, capacity=10), Subscriber(TOPIC, capacity=10)
    hub.attach(one)
    hub.attach(two)
    entry_id = source.append(TOPIC)
    assert [await next_id(one), await next_id(two)] == [entry_id, entry_id]
    assert TOPIC in source.subscribed
    await hub.detach(one)
    assert TOPIC in source.subscribed
    await hub.detach(two)
    assert TOPIC not in source.subscribed
    assert hub.subscribers(TOPIC) == []


# -- registry --------------------------------------------------------------------------------------------------


def test_registry_enforces_user_then_server_limits_with_structured_keys() -> None:
    """Limits count per user and in total; keys compare whole, so one user's name never matches another's."""
    registry: ConnectionRegistry[object] = ConnectionRegistry(max_per_user=2, max_total=3)
    handles = [object() for _ in range(4)]
    registry.add(ConnectionKey("alice", TopicKind.OPERATION, "op"), handles[0])
    registry.add(ConnectionKey("alice", TopicKind.CHANNEL, "alice:op"), handles[1])
    with pytest.raises(UserLimitExceeded):
        registry.add(ConnectionKey("alice", TopicKind.OPERATION, "other"), handles[2])
    registry.add(ConnectionKey("alice:operation", TopicKind.OPERATION, "op"), handles[2])
    with pytest.raises(ServerLimitExceeded):
        registry.add(ConnectionKey("bob", TopicKind.OPERATION, "op"), handles[3])
    assert registry.remove(ConnectionKey("alice", TopicKind.OPERATION, "op"), handles[0])
    assert not registry.remove(ConnectionKey("alice", TopicKind.OPERATION, "op"), handles[0])
    registry.add(ConnectionKey("bob", TopicKind.OPERATION, "op"), handles[3])
    assert (len(registry), registry.count("alice"), registry.count("bob")) == (3, 1, 1)
