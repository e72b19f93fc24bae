"""``ProgressManager``: the web half's facade, its public methods (see docs/migration.md) over the delivery core.

It wires the pieces together (a Redis command client and pub/sub client, the live source, the hub, the connection
registry, the gateway, the reads and the async publisher) and owns their lifecycle; the work itself happens in those
pieces. The router and the canceller use two of them directly: ``_gateway`` (open and end sessions) and ``_reads``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from starlette.websockets import WebSocket

from .._core.clients import AsyncClient, async_command_client, async_pubsub_client
from .._core.codec import make_entry
from .._core.keys import validate_channel, validate_entry_type, validate_operation_id
from .._core.redis_errors import REDIS_FAILURES
from .._core.schemas import CHUNKING_PROGRESS
from .._core.settings import ProgressSettings
from .._core.streams import Topic, TopicKind
from . import _close_codes as close
from ._async_publisher import AsyncProgressPublisher
from ._cluster_source import ClusterSource
from ._connections import Connections
from ._gateway import Gateway
from ._hub import Hub
from ._metrics import WebTally, count_into
from ._mine import UserOperations
from ._reads import NewestReader, OperationReads
from ._redis_source import RedisSource
from ._registry import ConnectionKey
from ._server_exit import ServerExitWatch
from ._state import OperationGetter, has_status_and_progress, snapshot
from ._user_count import RedisUserCount

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger(__name__)

THROTTLE_IDLE_SECONDS = 300.0


class ProgressManager:
    """Delivers operation progress (and custom channel messages) from Redis to WebSocket and SSE clients.

    Settings come from ``ProgressSettings`` (environment) unless given; pass ``redis=`` to use a ready-made
    ``redis.asyncio.Redis`` for commands (the manager then opens only its pub/sub connection itself), or a
    ``redis.asyncio.cluster.RedisCluster`` (the manager then subscribes per shard, over connections to its nodes).
    Nothing connects before ``startup()`` (or the ``lifespan``), and a Redis that is down does not stop it.
    With the ``metrics`` extra installed, its metrics are exported by ``metrics_registry`` (default:
    ``prometheus_client.REGISTRY``, so an existing ``/metrics`` shows them; see docs/operating.md).
    """

    def __init__(
        self,
        settings: ProgressSettings | None = None,
        *,
        redis: AsyncClient | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings or ProgressSettings()
        self._owns_commands = redis is None
        self.redis: AsyncClient = redis if redis is not None else async_command_client(self.settings)
        self._tally = WebTally()
        self._pubsub_redis: Redis | None = None
        self._source: RedisSource | ClusterSource
        if isinstance(self.redis, RedisCluster):
            self._source = ClusterSource(self.settings, commands=self.redis, tally=self._tally)
        else:
            self._pubsub_redis = async_pubsub_client(self.settings, redis if isinstance(redis, Redis) else None)
            self._source = RedisSource(self.settings, commands=self.redis, pubsub=self._pubsub_redis, tally=self._tally)
        self._tally.source = self._source
        self.metrics_registry = metrics_registry
        self.metrics_enabled = count_into(metrics_registry, self._tally)
        """Whether this manager's metrics are exported (``prometheus_client`` is installed)."""
        self._hub = Hub(
            self._source,
            history_batch=self.settings.history_batch,
            max_entry_bytes=self.settings.max_entry_bytes,
            retry_max_seconds=self.settings.reconnect_max_seconds,
            clock=self._source.now_ms,
            tally=self._tally,
        )
        self._source.bind(self._hub)
        reader = NewestReader(
            self._source,
            max_entry_bytes=self.settings.max_entry_bytes,
            wait_seconds=self.settings.socket_timeout_seconds,
        )
        self._reads = OperationReads(reader, history_batch=self.settings.history_batch)
        self._publisher = AsyncProgressPublisher(self.redis, self.settings, on_failure=self._publish_failed)
        self._user_count = RedisUserCount(
            self.redis,
            self._publisher.keys,
            limit=self.settings.max_connections_per_user,
            lease_seconds=self.settings.connection_lease_seconds,
        )
        self._connections = Connections(
            self._hub,
            capacity=self.settings.client_queue_size,
            max_per_user=self.settings.max_connections_per_user,
            max_total=self.settings.max_total_connections,
            shared=self._user_count,
            close_timeout=self.settings.send_timeout_seconds,
            tally=self._tally,
        )
        self._gateway = Gateway(self._connections, self.startup, self._tally)
        self._mine = UserOperations(self.redis, self.settings)
        self._exit_watch = ServerExitWatch(self._gateway.end_streams)
        self._starting: asyncio.Future[None] | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------------------------

    @property
    def redis_available(self) -> bool:
        """Whether live delivery is connected to Redis right now."""
        return self._source.available

    @property
    def connection_count(self) -> int:
        """Open WebSocket and SSE connections of this process (each holds its slot until its socket is gone)."""
        return len(self._connections)

    async def startup(self) -> None:
        """Start live delivery; returns after the first connection attempt and keeps retrying in the background.

        Callers arriving while it starts (the first requests of a host that forwards no lifespan) wait for the same
        start, which a caller that goes away does not interrupt.
        """
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        if not self._starting.done():  # once started, a no-op on any event loop
            await asyncio.shield(self._starting)

    async def _start(self) -> None:
        self._exit_watch.start()
        await self._user_count.start()
        await self._source.start()
        if self._source.available:
            logger.info("Progress manager connected to Redis")
        else:
            logger.warning("Progress manager started without Redis: current state only until it is reachable")

    async def shutdown(self) -> None:
        """Write pending throttled values, close every connection, stop live delivery and close owned clients."""
        if self._closed:
            return
        self._closed = True
        await self._exit_watch.stop()
        with contextlib.suppress(*REDIS_FAILURES):
            await self._publisher.aclose()
        await self._connections.close_all(*close.SHUTDOWN)
        await self._user_count.stop()
        await self._source.stop()
        if self._pubsub_redis is not None:
            await self._pubsub_redis.aclose()
        if self._owns_commands:
            await self.redis.aclose()

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """``FastAPI(lifespan=manager.lifespan)``: ``startup()`` before serving, ``shutdown()`` after."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    def set_operation_getter(self, get_operation_func: OperationGetter | None) -> None:
        """Set ``getter(operation_id)`` (sync or async) whose answer is sent as ``current_state`` on connect."""
        self._gateway.get_operation = get_operation_func

    # -- operation connections ------------------------------------------------------------------------------------

    async def connect(
        self, websocket: WebSocket, operation_id: str, user_id: str, *, last_event_id: str | None = None
    ) -> None:
        """Accept a WebSocket for an operation: ``current_state``, then the history after ``last_event_id``, then live.

        Refusals close the socket with 1008 and raise ``ConnectionRefused`` (``UserLimitExceeded``,
        ``ServerLimitExceeded``). Returns once the socket is accepted; history and live entries follow.
        """
        topic = Topic(TopicKind.OPERATION, validate_operation_id(operation_id))
        await self._gateway.open_socket(websocket, topic, user_id, last_event_id)

    async def disconnect(self, websocket: WebSocket, operation_id: str, user_id: str) -> None:
        """Forget a WebSocket of an operation (call it when the socket is done, however it ended)."""
        await self._gateway.disconnect(websocket, ConnectionKey(str(user_id), TopicKind.OPERATION, operation_id))

    async def connect_to_channel(
        self, websocket: WebSocket, channel: str, user_id: str, *, last_event_id: str | None = None
    ) -> None:
        """Accept a WebSocket for a custom channel: its stored messages (after ``last_event_id``), then live ones."""
        topic = Topic(TopicKind.CHANNEL, validate_channel(channel))
        await self._gateway.open_socket(websocket, topic, user_id, last_event_id)

    async def disconnect_from_channel(self, websocket: WebSocket, channel: str, user_id: str) -> None:
        """Forget a WebSocket of a custom channel."""
        await self._gateway.disconnect(websocket, ConnectionKey(str(user_id), TopicKind.CHANNEL, channel))

    # -- publishing -----------------------------------------------------------------------------------------------

    async def send_update(
        self,
        operation_id: str,
        update_type: str,
        data: dict[str, Any],
        *,
        throttle: bool = False,
        throttle_key: str | None = None,
    ) -> None:
        """Append an entry to the operation's stream; without Redis, hand it straight to local clients instead.

        With ``throttle``, at most one entry per ``throttle_seconds`` and ``throttle_key`` (default: the operation)
        is written; the newest held-back value follows when the interval ends, or before the operation's next entry.
        An ``update_type`` that breaks the entry type rule raises ``InvalidEntryType`` (nothing is sent).
        """
        validate_operation_id(operation_id)
        validate_entry_type(update_type)
        try:
            await self._publisher.publish(operation_id, update_type, data, throttle=throttle, throttle_key=throttle_key)
        except REDIS_FAILURES as exc:
            logger.warning(
                "Writing %s of %s to Redis failed (%s); sending to local clients only", update_type, operation_id, exc
            )
            await self._publish_failed(operation_id, make_entry(update_type, data))

    async def send_chunking_progress(
        self,
        operation_id: str,
        progress_percentage: float,
        documents_processed: int,
        total_documents: int,
        chunks_created: int,
        current_document: str | None = None,
        throttle: bool = True,
    ) -> None:
        """A ``chunking_progress`` entry, throttled per operation unless ``throttle=False``."""
        data = {
            "progress_percentage": progress_percentage,
            "documents_processed": documents_processed,
            "total_documents": total_documents,
            "chunks_created": chunks_created,
            "current_document": current_document,
        }
        await self.send_update(operation_id, CHUNKING_PROGRESS, data, throttle=throttle, throttle_key=operation_id)

    async def send_chunking_event(self, operation_id: str, event_type: str, data: dict[str, Any]) -> None:
        """Any other event (``chunking_started``, ``chunking_document_complete``, ...), never throttled."""
        await self.send_update(operation_id, event_type, data)

    async def send_message(self, channel: str, message: dict[str, Any]) -> None:
        """Send a message to a custom channel (stored for ``channel_ttl_seconds``); local clients only without Redis.

        A message with a string ``type`` and an object ``data`` keeps them; anything else is sent as
        ``{"type": "message", "data": message}``. A ``type`` that breaks the entry type rule raises
        ``InvalidEntryType`` (nothing is sent).
        """
        entry = _channel_entry(message)
        validate_entry_type(entry["type"])
        topic = Topic(TopicKind.CHANNEL, validate_channel(channel))
        try:
            await self._publisher.publish_to_channel(channel, entry)
        except REDIS_FAILURES as exc:
            logger.warning("Writing to channel %s failed (%s); sending to local clients only", channel, exc)
            self._hub.broadcast(topic, entry)

    async def broadcast_to_operation(self, operation_id: str, message: dict[str, Any]) -> None:
        """Send ``message`` to this process' clients of an operation directly, without storing it.

        Its ``type`` (default ``message``) must follow the entry type rule, else ``InvalidEntryType``.
        """
        validate_entry_type(message.get("type", "message"))
        self._hub.broadcast(Topic(TopicKind.OPERATION, validate_operation_id(operation_id)), message)

    async def _publish_failed(self, operation_id: str, entry: dict[str, Any]) -> None:
        self._hub.broadcast(Topic(TopicKind.OPERATION, operation_id), entry)

    # -- reading and clean-up -------------------------------------------------------------------------------------

    async def snapshot(self, operation_id: str) -> dict[str, Any] | None:
        """Latest status, latest progress and last entry id of an operation; ``None`` when nothing is known.

        The newest entries are read in small batches until a status and a progress are found (at most 256 entries;
        entries over ``max_entry_bytes`` are skipped). Raises ``SourceUnavailable`` when Redis cannot be read in time.
        """
        newest = await self._reads.newest(operation_id, has_status_and_progress)
        return snapshot(operation_id, newest, await self._gateway.current_state(operation_id))

    async def cleanup_stream(self, operation_id: str) -> None:
        """Delete an operation's stream (when it is finished or deleted) to free Redis memory."""
        stream = self._publisher.keys.stream(operation_id)
        try:
            await self.redis.delete(stream)
        except REDIS_FAILURES as exc:
            logger.warning("Deleting the stream of %s failed: %s", operation_id, exc)

    async def cleanup_operation_channel(self, operation_id: str) -> None:
        """Forget an operation entirely: throttle state, its stream, and its local connections (closed with 1000)."""
        self._publisher.forget(operation_id)
        await self.cleanup_stream(operation_id)
        for subscriber in self._hub.subscribers(Topic(TopicKind.OPERATION, operation_id)):
            subscriber.outbox.close(*close.COMPLETED)

    async def cleanup_stale_connections(self) -> int:
        """Unregister connections whose sender has stopped and drop idle throttle state; return how many."""
        stale = self._connections.stale()
        for session in stale:
            await self._connections.end(session)
        self._publisher.forget_idle(THROTTLE_IDLE_SECONDS)
        if stale:
            logger.info("Cleaned up %d stale connections", len(stale))
        return len(stale)


def _channel_entry(message: dict[str, Any]) -> dict[str, Any]:
    if isinstance(message.get("type"), str) and isinstance(message.get("data"), dict):
        timestamp = message.get("timestamp")
        return make_entry(message["type"], message["data"], timestamp if isinstance(timestamp, str) else None)
    return make_entry("message", message)
