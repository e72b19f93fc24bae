"""A Sentinel deployment (``redis+sentinel://``) through a real failover: the master is SIGKILLed while a worker
publisher writes and a WebSocket client watches; an old master that comes back empty is never written to."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.client import connect

from celery_progress_ws import ProgressPublisher, ProgressSettings, PublishResult
from devtools.sentinel import PrivateSentinelSet
from tests.support.harness import ThreadServer, receive_json, receive_until_closed, ws_url
from tests.support.streams import read

pytestmark = pytest.mark.integration

WRITE_PAUSE_SECONDS = 0.005
WRITES_AFTER_RECOVERY = 40


@pytest.fixture
def sentinel_settings(web_settings: ProgressSettings, sentinel_set: PrivateSentinelSet) -> ProgressSettings:
    """The test's settings on the sentinel set's URL, with quick retries, and a buffer and streams that hold a whole
    failover."""
    return web_settings.model_copy(
        update={
            "redis_url": sentinel_set.url,
            "retry_interval_seconds": 0.1,
            "socket_timeout_seconds": 0.5,
            "pending_buffer_size": 10_000,
            "stream_maxlen": 100_000,
        }
    )


@dataclass
class Sequence:
    """Progress 1, 2, 3... written by a thread every few milliseconds, with what each call returned and when."""

    publisher: ProgressPublisher
    operation: str
    results: list[tuple[int, PublishResult, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        number = 0
        while not self.stop.is_set():
            number += 1
            result = self.publisher.progress(self.operation, number, 1_000_000, force=True)
            self.results.append((number, result, time.monotonic()))
            time.sleep(WRITE_PAUSE_SECONDS)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "the sequence did not get there in time"
            time.sleep(0.01)

    def sent_since(self, moment: float) -> int:
        return sum(1 for _, result, at in list(self.results) if result is PublishResult.SENT and at >= moment)


def documents(entries: list[dict[str, object]]) -> list[int]:
    return [entry["data"]["documents_processed"] for entry in entries if entry["type"] == "chunking_progress"]  # type: ignore[index]


async def test_a_master_killed_mid_sequence_loses_nothing_sent_and_clients_see_every_entry_in_order(
    serve: Callable[..., ThreadServer], sentinel_settings: ProgressSettings, sentinel_set: PrivateSentinelSet
) -> None:
    """Writes during the failover are buffered, not lost; after it they land on the new master in order and once (the
    write in flight at the kill, sent again, finds itself if it was replicated), and a watching WebSocket client
    receives every stored entry once, in order."""
    server = serve(sentinel_settings)
    operation = f"op-{uuid.uuid4().hex[:12]}"
    publisher = ProgressPublisher(sentinel_settings)
    assert publisher.publish(operation, "status_update", {"status": "started"}) is PublishResult.SENT
    sequence = Sequence(publisher, operation)
    async with connect(ws_url(server, operation)) as websocket:
        assert (await receive_json(websocket))["data"]["status"] == "started"
        writer = threading.Thread(target=sequence.run)
        writer.start()
        try:
            await asyncio.to_thread(sequence.wait_for, lambda: len(sequence.results) >= 20)
            killed_at = time.monotonic()
            await asyncio.to_thread(sentinel_set.kill_master)
            recovered_at = time.monotonic()
            await asyncio.to_thread(
                sequence.wait_for, lambda: sequence.sent_since(recovered_at) >= WRITES_AFTER_RECOVERY
            )
        finally:
            sequence.stop.set()
            writer.join()
        assert publisher.publish(operation, "status_update", {"status": "completed"}, final=True) in (
            PublishResult.SENT,
            PublishResult.BUFFERED,
        )
        assert publisher.flush(timeout=10)
        messages = await receive_until_closed(websocket, within=30)
    publisher.close()

    with sentinel_set.master_client() as master:
        stored = documents(read(master, sentinel_settings, operation))
    written = [number for number, _, _ in sequence.results]
    sent = [number for number, result, _ in sequence.results if result is PublishResult.SENT]
    buffered = [number for number, result, _ in sequence.results if result is PublishResult.BUFFERED]
    after_recovery = [number for number, _, at in sequence.results if at >= recovered_at]
    lost = sorted(set(written) - set(stored))
    print(
        f"\nfailover (kill_master) {recovered_at - killed_at:.2f} s; writes {len(written)}, sent {len(sent)}, "
        f"buffered {len(buffered)}, lost {len(lost)} {lost}; "
        f"longest wait between sent writes {longest_gap(sequence.results):.2f} s"
    )
    # Order is kept; a write whose reply the dying master never sent is sent again to the new one, which stores it
    # unless it holds it already: once, never lost.
    assert stored == sorted(set(stored))
    assert not set(after_recovery) - set(stored)
    assert not set(buffered) - set(stored)  # the buffer was written to the new master
    assert not set(sent) - set(stored)
    received = documents(messages)
    assert received == sorted(set(received))
    assert not set(stored) - set(received)
    assert messages[-1]["data"]["status"] == "completed"


def longest_gap(results: list[tuple[int, PublishResult, float]]) -> float:
    """The longest time between two writes reported ``sent`` (how long writes could not reach a master)."""
    times = [at for _, result, at in results if result is PublishResult.SENT]
    return max((later - earlier for earlier, later in itertools.pairwise(times)), default=0.0)


def test_an_old_master_restarted_empty_is_never_written_to(
    sentinel_settings: ProgressSettings, sentinel_set: PrivateSentinelSet
) -> None:
    """While the killed master is back as an empty master the sentinels no longer name, every write goes to the new
    master: the old one never runs the append script, and nothing is lost."""
    operation = f"op-{uuid.uuid4().hex[:12]}"
    victim = sentinel_set.kill_master()
    with ProgressPublisher(sentinel_settings) as publisher:
        sequence = Sequence(publisher, operation)
        writer = threading.Thread(target=sequence.run)
        writer.start()
        try:
            sequence.wait_for(lambda: len(sequence.results) >= 20)
            sentinel_set.restart_old_master_empty(victim)
            sequence.wait_for(lambda: len(sequence.results) >= 20 + 20)
        finally:
            sequence.stop.set()
            writer.join()
        assert publisher.flush(timeout=10)
    old = sentinel_set.data_nodes[victim].info("commandstats")
    assert "cmdstat_evalsha" not in old
    assert "cmdstat_eval" not in old
    with sentinel_set.master_client() as master:
        stored = documents(read(master, sentinel_settings, operation))
    written = [number for number, _, _ in sequence.results]
    missing, extra = sorted(set(written) - set(stored)), sorted(set(stored) - set(written))
    assert stored == written, f"missing {missing}, unexpected {extra}, {len(stored) - len(set(stored))} twice"


def test_a_writer_leaves_a_master_the_sentinels_replaced_even_while_it_still_takes_writes(
    sentinel_settings: ProgressSettings, sentinel_set: PrivateSentinelSet
) -> None:
    """A master the sentinels can no longer reach but the worker can (split brain) stops receiving writes soon after
    the sentinels promote a replica, before they demote it: the writer confirms its master with them as it writes."""
    operation = f"op-{uuid.uuid4().hex[:12]}"
    with ProgressPublisher(sentinel_settings) as publisher:
        sequence = Sequence(publisher, operation)
        writer = threading.Thread(target=sequence.run)
        writer.start()
        try:
            sequence.wait_for(lambda: len(sequence.results) >= 20)
            zombie = sentinel_set.partition_master()
            promoted_after = len(sequence.results)
            with sentinel_set.master_client() as master:

                def reached_new_master() -> bool:
                    return max(documents(read(master, sentinel_settings, operation)), default=0) > promoted_after

                sequence.wait_for(reached_new_master)
            # The sentinels demote a master they cannot PING only when their next INFO round finds it (~10 s); the
            # writer must have left it on its own before that, or everything written to it until then is lost.
            assert sentinel_set.data_nodes[zombie].info("replication")["role"] == "master"
            zombie_calls = evalsha_calls(sentinel_set, zombie)
            settled = len(sequence.results)
            sequence.wait_for(lambda: len(sequence.results) >= settled + 20)
        finally:
            sequence.stop.set()
            writer.join()
        assert publisher.flush(timeout=10)
    assert evalsha_calls(sentinel_set, zombie) == zombie_calls
    with sentinel_set.master_client() as master:
        stored = documents(read(master, sentinel_settings, operation))
    written = [number for number, _, _ in sequence.results]
    lost = sorted(set(written) - set(stored))
    print(f"\nsplit brain: writes {len(written)}, lost to the replaced master {len(lost)} ({lost[:1]}..{lost[-1:]})")
    assert stored == sorted(set(stored))  # order kept, nothing twice
    assert not set(written[settled:]) - set(stored)


def evalsha_calls(sentinel_set: PrivateSentinelSet, node: int) -> int:
    """How many times data node ``node`` has run EVALSHA."""
    stats = sentinel_set.data_nodes[node].info("commandstats").get("cmdstat_evalsha")
    return int(stats["calls"]) if isinstance(stats, dict) else 0
