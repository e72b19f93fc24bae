"""Ordered, outage-tolerant writes: one connection (or one cluster client) per process, a bounded buffer per server,
one warning per outage and server.

Every entry passes through its lane's buffer (``lanes``: one per server that takes writes) and leaves it oldest first,
written by one thread at a time per lane (``Lane.io_lock``), so the entries of an operation reach Redis in the order
they were made, and a cluster shard that is down holds back only its own operations. Buffers and health are guarded by
a lock the owner passes in (it enqueues atomically with its own decisions); that lock is never held during I/O.
After a failed write nothing but a probe (the owner's background retry, or a flush) touches that server until a write
succeeds again, so no caller waits for an unreachable server more than once per outage. A server that answers but
cannot take writes now (a replica's ``READONLY``, ``LOADING``, ``MASTERDOWN``...: ``_core.redis_errors.OUTAGE``) is an
outage like an unreachable one; an entry Redis refuses for good (``WRONGTYPE``, ``OOM``...) is logged and skipped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import redis
from redis.cluster import PRIMARY, RedisCluster
from redis.exceptions import AskError, MovedError

from .._core import metrics
from .._core.append import RETRY_MARGIN, AppendCall, WriteCall, retried
from .._core.redis_errors import OUTAGE, REDIS_FAILURES, describe
from .._core.settings import ProgressSettings
from .buffer import Rank
from .connection import ClientSource, WriterConnection, node_runner
from .lanes import Lane, Lanes, slot_owner
from .metrics import Runner
from .results import PublishResult

logger = logging.getLogger(__name__)


class StreamWriter:
    """Writes script calls to Redis oldest first and keeps them in bounded buffers while Redis cannot take them.

    Calls queue in lanes (``lanes``): one per server that takes writes, so a cluster shard that is down holds back only
    the operations it serves. ``on_backlog`` is called, with ``lock`` held, whenever entries wait for Redis to come back
    (so the owner can schedule ``drain(probe=True)`` at ``next_retry()``). A ready-made ``client`` is used as it is;
    otherwise each process opens its own single connection, or its own cluster client (``_core.clients.writer_client``).
    A call's ``on_reply`` gets the script's reply.
    """

    def __init__(
        self,
        settings: ProgressSettings,
        client: ClientSource | None,
        lock: threading.Lock,
        on_backlog: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.lanes = Lanes(settings.pending_buffer_size)
        self._connection = WriterConnection(settings, client, self._route_by_slots)
        self._lock = lock
        self._on_backlog = on_backlog
        self._awaited: dict[int, PublishResult | None] = {}
        """``id()`` of each call a caller will ask about in ``write_now`` -> what became of it (``None``: buffered)."""

    @property
    def healthy(self) -> bool:
        """``False`` while any server this writer writes to is marked down."""
        return self.lanes.down == 0

    def pending(self) -> int:
        """Entries waiting to be written (lock held)."""
        return self.lanes.pending()

    def next_work(self) -> float | None:
        """When ``drain(probe=True)`` has something to do (``time.monotonic()``): at once if a healthy lane holds
        entries, else when the earliest lane marked down may be probed; ``None`` if never (lock held)."""
        due = None
        for lane in self.lanes:
            if not lane.healthy:
                due = lane.retry_at if due is None else min(due, lane.retry_at)
            elif lane.buffer:
                return 0.0
        return due

    def hold(self, call: WriteCall, rank: Rank) -> None:
        """Queue ``call`` for the next ``drain`` (lock held); it may be evicted if its lane is full."""
        self.lanes.hold(call, rank)

    def enqueue(self, call: WriteCall, rank: Rank) -> PublishResult | None:
        """Queue ``call`` (lock held); ``None`` means: call ``write_now(call, None)`` after releasing the lock."""
        lane = self.lanes.hold(call, rank)
        if lane is None:
            return PublishResult.DROPPED
        if not lane.healthy:
            self._on_backlog()
            return PublishResult.BUFFERED
        self._awaited[id(call)] = None  # the caller holds ``call`` until write_now: its id names it until then
        return None

    def write_now(self, call: WriteCall, result: PublishResult | None) -> PublishResult:
        """Finish what ``enqueue`` started: drain the call's lane unless the entry was already buffered or dropped, then
        the other healthy lanes (a summary queued beside an entry may live on another shard), and say what became of
        ``call`` (whichever thread wrote it)."""
        if result is not None:
            return result
        try:
            with self._lock:
                lane = self.lanes.lane_for(call)
            if self._drain_lane(lane, probe=False):
                self.drain()
        finally:
            with self._lock:
                outcome = self._awaited.pop(id(call), None)
        return PublishResult.BUFFERED if outcome is None else outcome

    def drain(self, probe: bool = False) -> bool:
        """Write every lane's entries oldest first; ``True`` once all are empty, ``False`` if Redis failed anywhere.

        A lane marked down is only written by a ``probe`` whose time has come; healthy lanes go first, so a probe of
        an unreachable server never delays the others.
        """
        now = time.monotonic()
        with self._lock:
            lanes = sorted(self.lanes, key=lambda lane: not lane.healthy)
        done = True
        for lane in lanes:
            due = lane.healthy or (probe and lane.retry_at <= now)
            done = (due and self._drain_lane(lane, probe)) and done
        return done

    def _drain_lane(self, lane: Lane, probe: bool) -> bool:
        """Write ``lane``'s entries oldest first, as many per round trip as the runner takes; ``True`` once it is
        empty, ``False`` if Redis failed."""
        written = 0
        came_back = probe_server = redirected = False
        with lane.io_lock:
            while True:
                with self._lock:
                    if not (lane.healthy or probe):
                        return False
                    empty = not lane.buffer
                    if empty and (lane.healthy or written):
                        came_back = self.lanes.mark(lane, True)
                        self.lanes.emptied(lane)
                        break
                if empty:  # a probe with nothing to write: ask the server itself
                    probe_server = True
                    break
                try:
                    shared = self._shared()
                    runner = shared if redirected else self._runner(lane)
                except OUTAGE as exc:
                    self._went_down(lane, exc)
                    return False
                with self._lock:
                    taken = lane.buffer.take(runner.batch)
                if not taken:
                    continue
                settled, healthy, redirected = self._write(lane, runner, taken, direct=runner is not shared)
                written += settled
                if not healthy:
                    return False
            if probe_server:
                return self._ping(lane)
        if came_back:
            self._came_back(lane, written)
        return True

    def _write(
        self, lane: Lane, runner: Runner, taken: list[tuple[WriteCall, Rank]], *, direct: bool
    ) -> tuple[int, bool, bool]:
        """Run the ``taken`` calls in one round trip (``io_lock`` held) and put back, in order, those not settled;
        return how many were settled (written or refused for good), ``False`` if the server cannot take writes, and
        ``True`` if a cluster node's ``direct`` connection redirected a call (the rest of the lane then goes through
        the cluster client). A redirect that reaches the shared client is an outage: a single-server client pointed
        at a cluster node, or a cluster client out of redirections."""
        try:
            outcomes = runner.run_many([call for call, _ in taken])
        except OUTAGE as exc:  # the server may have run some of them: each looks for itself when sent again
            depth = len(taken) + RETRY_MARGIN
            self._put_back(lane, [(retried(call, depth), rank) for call, rank in taken])
            self._went_down(lane, exc)
            return 0, False, False
        except REDIS_FAILURES as exc:  # raised for the call as a whole: the first is refused, the rest go back
            outcomes = [exc]
            self._put_back(lane, taken[1:])
        for index, ((call, _), outcome) in enumerate(zip(taken, outcomes, strict=False)):
            if direct and isinstance(outcome, (MovedError, AskError)):  # a node's own connection: its slot moved
                self._put_back(lane, taken[index:])
                return index, True, True
            if isinstance(outcome, OUTAGE):
                self._put_back(lane, taken[index:])
                self._went_down(lane, outcome)
                return index, False, False
            if isinstance(outcome, REDIS_FAILURES):  # a refusal for good (wrong key type, OOM...): retrying won't help
                self._settle(call, PublishResult.DROPPED)
                logger.warning(
                    "celery-progress-ws: Redis refused an entry for %s (%s); skipped", call.keys[0], describe(outcome)
                )
                continue
            self._settle(call, PublishResult.SENT)
            handler = call.on_reply
            if handler is not None:
                try:
                    handler(outcome)
                except Exception:  # a bug in a handler must not keep the calls behind it from Redis
                    logger.exception("celery-progress-ws: handling the reply for %s failed", call.keys[0])
        return len(outcomes), True, False

    def _put_back(self, lane: Lane, items: list[tuple[WriteCall, Rank]]) -> None:
        with self._lock:
            for call, rank in reversed(items):
                lane.buffer.put_back(call, rank)

    def _ping(self, lane: Lane) -> bool:
        """Probe the server of an empty lane marked down (``io_lock`` held): back up if it answers; forgotten if a
        cluster no longer has it as a primary."""
        try:
            client = self._connect()[0]
            if isinstance(client, RedisCluster) and lane.name:
                node = client.get_node(node_name=lane.name)  # type: ignore[no-untyped-call]
                if node is None or node.server_type != PRIMARY:
                    with self._lock:
                        if not lane.buffer:
                            self.lanes.forget(lane)
                    return True
                client.ping(target_nodes=node)
            else:
                client.ping()
        except OUTAGE as exc:
            self._went_down(lane, exc)
            return False
        except REDIS_FAILURES:  # it answered (an ACL may forbid PING): writes will tell the rest
            pass
        with self._lock:
            came_back = self.lanes.mark(lane, True)
        if came_back:
            self._came_back(lane, 0)
        return True

    def check(self) -> bool:
        """Ping Redis once (every primary of a cluster); on failure log the outage warning (once) and return ``False``.
        Never raises."""
        lane = next(iter(self.lanes))  # the unrouted lane, which every writer has
        with lane.io_lock:
            try:
                client = self._connect()[0]
                client.ping()
            except OUTAGE as exc:
                self._went_down(lane, exc)
                return False
            except REDIS_FAILURES as exc:  # e.g. an ACL that forbids PING: the writes may still work
                logger.warning("celery-progress-ws: Redis at %s refused PING (%s)", self._where(lane), describe(exc))
                return False
        for lane in self.lanes:
            with self._lock:
                came_back = self.lanes.mark(lane, True)
            if came_back:
                self._came_back(lane, 0)
        return True

    def get(self, key: str) -> bytes | None:
        """One GET on this writer's connection; ``None`` while the key's server is marked down or if it fails. Never
        raises."""
        with self._lock:
            lane = self.lanes.lane_for(AppendCall([key], []))
        with lane.io_lock:
            if not lane.healthy:
                return None
            try:
                value = self._connect()[0].get(key)
            except OUTAGE as exc:
                self._went_down(lane, exc)
                return None
            except REDIS_FAILURES as exc:
                logger.warning("celery-progress-ws: Redis refused to read %s (%s)", key, describe(exc))
                return None
        return value.encode() if isinstance(value, str) else value if isinstance(value, bytes) else None

    def close(self) -> None:
        """Close the connection this writer opened (a later write reopens one); a given client is left open, one made by
        a given factory is closed."""
        for lane in self.lanes:
            with lane.io_lock:
                if lane.direct is not None:
                    lane.direct[2].disconnect()
                    lane.direct = None
        self._connection.close()
        with self._lock:
            self.lanes.route_by(None)

    def _connect(self) -> tuple[redis.Redis | RedisCluster, Runner]:
        return self._connection.get()

    def _shared(self) -> Runner:
        return self._connection.get()[1]

    def _runner(self, lane: Lane) -> Runner:
        """``lane``'s runner (``io_lock`` held): on a cluster, while the lane is healthy, its primary's own connection
        (``node_runner``); otherwise the shared client, which re-reads the slot map and follows redirects: what a lane
        marked down needs to reach a promoted replica."""
        client, shared = self._connection.get()
        if not lane.name or not lane.healthy or not isinstance(client, RedisCluster):
            return shared
        pid = os.getpid()
        if lane.direct is None or lane.direct[0] != pid:
            made = node_runner(client, lane.name)
            if made is None:
                return shared
            lane.direct = (pid, *made)
        runner: Runner = lane.direct[1]
        return runner

    def _route_by_slots(self, client: RedisCluster) -> None:
        with self._lock:
            self.lanes.route_by(slot_owner(client))

    def _settle(self, call: WriteCall, outcome: PublishResult) -> None:
        """Note what became of ``call`` if a caller waits to hear it."""
        key = id(call)
        if key in self._awaited:
            with self._lock:
                if key in self._awaited:
                    self._awaited[key] = outcome

    def _went_down(self, lane: Lane, exc: Exception) -> None:
        with self._lock:
            first = self.lanes.mark(lane, False)
            metrics.worker.redis_up(False)
            lane.retry_at = time.monotonic() + self.settings.retry_interval_seconds
            self._on_backlog()
        if first:
            logger.warning(
                "celery-progress-ws: Redis at %s cannot take writes (%s); keeping up to %d entries in memory and "
                "retrying every %.1f s",
                self._where(lane),
                describe(exc),
                self.settings.pending_buffer_size,
                self.settings.retry_interval_seconds,
            )

    def _came_back(self, lane: Lane, written: int) -> None:
        with self._lock:
            if self.lanes.down == 0:
                metrics.worker.reconnected()
            dropped, lane.buffer.dropped = lane.buffer.dropped, 0
        logger.info(
            "celery-progress-ws: Redis at %s answers again; wrote %d buffered entries, %d were dropped meanwhile",
            self._where(lane),
            written,
            dropped,
        )

    def _where(self, lane: Lane) -> str:
        where = self._connection.describe()
        return f"{where} (node {lane.name})" if lane.name else where
