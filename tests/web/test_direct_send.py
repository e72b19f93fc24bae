"""The direct path: a message offered while the sender is idle is sent by the offering task; order and endings hold."""

from __future__ import annotations

import asyncio

from celery_progress_ws._core.codec import parse_stream_id
from celery_progress_ws._core.errors import TransportClosed
from celery_progress_ws._core.streams import Topic, TopicKind
from celery_progress_ws.web._outbox import Outgoing
from celery_progress_ws.web._registry import ConnectionKey
from celery_progress_ws.web._session import Session

TOPIC = Topic(TopicKind.OPERATION, "op-1")


class PausableTransport:
    """Sends complete at once unless paused (then they wait, as uvicorn's do for a paused transport)."""

    max_batch = 1

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.gone = False

    async def send(self, item: Outgoing) -> None:
        await self.writable.wait()
        if self.gone:
            raise TransportClosed("peer left")
        self.sent.append(item.text)

    async def send_many(self, items: list[Outgoing]) -> None:
        for item in items:
            await self.send(item)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def abort(self) -> None:
        self.gone = True


def entry(n: int, *, terminal: bool = False) -> Outgoing:
    entry_id = f"{n}-0"
    return Outgoing.stored(entry_id, parse_stream_id(entry_id), {"type": "progress", "n": n}, terminal=terminal)


async def started(transport: PausableTransport) -> Session:
    session = Session(ConnectionKey("u", TOPIC.kind, TOPIC.name), TOPIC, capacity=8, last_event_id=None)
    session.subscriber.catching_up = False
    session.start_sender(transport)
    await asyncio.sleep(0)  # the sender reaches its idle wait
    return session


async def test_an_idle_sender_lets_the_offering_task_send_at_once() -> None:
    transport = PausableTransport()
    session = await started(transport)
    session.subscriber.offer_live(entry(1))
    assert transport.sent == [entry(1).text]  # sent before any task switch
    assert len(session.outbox) == 0
    session.subscriber.offer_live(entry(2, terminal=True))
    assert len(transport.sent) == 2
    assert session.sender is not None
    await asyncio.wait_for(session.sender, 1)
    assert transport.closed == (1000, "Operation completed")
    assert session.finished.is_set()


async def test_a_send_that_must_wait_is_finished_by_the_sender_before_what_queued_behind_it() -> None:
    transport = PausableTransport()
    session = await started(transport)
    transport.writable.clear()
    for n in (1, 2, 3):
        session.subscriber.offer_live(entry(n))
    assert transport.sent == []
    assert len(session.outbox) == 2  # the first is parked, the others queued
    transport.writable.set()
    await asyncio.sleep(0.01)
    assert transport.sent == [entry(n).text for n in (1, 2, 3)]
    session.subscriber.offer_live(entry(4))  # idle again: direct
    assert transport.sent[-1] == entry(4).text


async def test_a_queue_overflow_behind_a_waiting_send_still_closes_as_too_slow() -> None:
    transport = PausableTransport()
    session = await started(transport)
    transport.writable.clear()
    for n in range(1, 12):
        session.subscriber.offer_live(entry(n))
    assert session.outbox.aborted
    transport.writable.set()
    assert session.sender is not None
    await asyncio.wait_for(session.sender, 1)
    assert transport.closed == (1013, "Client too slow")
    assert transport.sent == [entry(1).text]  # the send in progress completes; the queued ones are dropped


async def test_a_peer_gone_during_a_direct_send_ends_the_sender() -> None:
    transport = PausableTransport()
    session = await started(transport)
    transport.gone = True
    session.subscriber.offer_live(entry(1))  # raises inside the direct send: handed to the sender, not the caller
    assert session.sender is not None
    await asyncio.wait_for(session.sender, 1)
    assert session.finished.is_set()
    assert session.outbox.closing
    assert transport.closed is None
    assert transport.sent == []


async def test_an_item_marked_not_direct_is_queued_for_the_sender() -> None:
    transport = PausableTransport()
    session = await started(transport)
    late = entry(1)
    late.direct = False  # the hub's choice when the reader is behind: batch through the queue
    session.subscriber.offer_live(late)
    assert transport.sent == []
    assert len(session.outbox) == 1
    await asyncio.sleep(0.01)
    assert transport.sent == [late.text]


async def test_a_queued_message_is_never_overtaken_by_a_later_direct_one() -> None:
    """A message that must queue (e.g. a late entry) wakes the idle sender; a direct-eligible message offered before
    the sender runs queues behind it instead of being sent first."""
    transport = PausableTransport()
    session = await started(transport)
    late = entry(1)
    late.direct = False
    session.subscriber.offer_live(late)
    session.subscriber.offer_live(entry(2))
    session.subscriber.offer_live(entry(3, terminal=True))
    assert transport.sent == []  # nothing went ahead of the queued message
    assert session.sender is not None
    await asyncio.wait_for(session.sender, 1)
    assert transport.sent == [entry(1).text, entry(2).text, entry(3).text]
