"""One typed settings object for both halves, read from ``CELERY_PROGRESS_WS_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .keys import validate_key_prefix
from .origins import allowed_origin_entry


class ProgressSettings(BaseSettings):
    """Configuration shared by the worker half and the web half.

    Build one with keyword arguments, or let it read ``CELERY_PROGRESS_WS_<NAME>`` environment variables.
    Nothing reads it at import time: it is created when a publisher, bootstep or manager needs it.
    """

    model_config = SettingsConfigDict(env_prefix="CELERY_PROGRESS_WS_", extra="ignore", frozen=True)

    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description="Redis that holds the progress streams: `redis://`, `rediss://` (TLS) or `unix://` for one "
        "server; `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]` (or "
        "`rediss+sentinel://`) for the current master of a Sentinel service (port 26379 by default; the password is "
        "the master's, the sentinels are asked without one); `redis+cluster://[[user]:password@]host[:port][,host[:port]"
        "...]` (or `rediss+cluster://`) for a Redis Cluster (both halves and `watch`; live entries use sharded "
        "pub/sub there).",
    )
    key_prefix: str = Field(
        default="",
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]*$",
        description="Prepended to every key and channel name, e.g. `myapp:`.",
    )
    throttle_seconds: float = Field(
        default=0.5, ge=0, description="Minimum interval between two published progress entries per operation."
    )
    stream_ttl_seconds: int = Field(default=86400, gt=0, description="TTL of a stream while its task runs.")
    completed_ttl_seconds: int = Field(
        default=300, gt=0, description="TTL of a stream after `completed` or `cancelled`."
    )
    failed_ttl_seconds: int = Field(default=60, gt=0, description="TTL of a stream after `failed`.")
    stream_maxlen: int = Field(default=1000, gt=0, description="Maximum number of entries kept per stream.")
    channel_ttl_seconds: int = Field(default=900, gt=0, description="TTL of a custom channel's stream.")
    history_ttl_seconds: int = Field(
        default=7 * 86400,
        gt=0,
        description="How long a user's operation index, summaries and feed live after their last update, and an "
        "operation's recorded owner after its own (see docs/ownership.md).",
    )
    history_max_per_user: int = Field(
        default=100, gt=0, description="Operations kept in a user's index; the oldest are dropped beyond it."
    )
    history_feed_maxlen: int = Field(
        default=1000, gt=0, description="Entries kept in a user's `operation_update` feed stream."
    )
    include_traceback: bool = Field(default=False, description="Include the traceback in `failed` status entries.")
    publish_queued: bool = Field(
        default=True, description="Publish a `queued` entry when a task is sent from a configured process."
    )
    socket_timeout_seconds: float = Field(
        default=1.0, gt=0, description="Socket and connect timeout of the publisher's Redis connection."
    )
    retry_interval_seconds: float = Field(
        default=2.0, ge=0, description="After a failed write, how long the publisher waits before trying Redis again."
    )
    pending_buffer_size: int = Field(
        default=256,
        gt=0,
        description="Entries kept in memory (per cluster primary) while Redis cannot take writes, terminal ones last "
        "dropped.",
    )
    max_entry_bytes: int = Field(
        default=65536, gt=0, description="Largest encoded entry accepted; larger ones are rejected or skipped."
    )
    max_connections_per_user: int = Field(
        default=10, gt=0, description="Open WebSocket/SSE connections one user may hold."
    )
    max_total_connections: int = Field(
        default=1000, gt=0, description="Open WebSocket/SSE connections one web process accepts."
    )
    client_queue_size: int = Field(
        default=1000, gt=0, description="Outgoing messages buffered per connection before it is closed as too slow."
    )
    max_client_message_bytes: int = Field(
        default=4096, gt=0, description="Largest message a client may send over the WebSocket."
    )
    client_messages_per_second: float = Field(
        default=10.0,
        gt=0,
        description="Messages per second a client may send over one WebSocket, on average; a client that keeps "
        "sending faster than this (beyond `client_message_burst`) is closed with 1008 `Too many messages`.",
    )
    client_message_burst: int = Field(
        default=20, gt=0, description="Messages a client may send at once before `client_messages_per_second` applies."
    )
    allowed_origins: tuple[str, ...] = Field(
        default=(),
        description="Origins (`scheme://host[:port]`, a JSON list in the environment) whose pages may use the "
        'routes besides the server\'s own; `"*"` allows any. Requests without `Origin` are always served.',
    )
    heartbeat_seconds: float = Field(default=15.0, gt=0, description="Interval of SSE heartbeat comments.")
    send_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long a client may take to accept one SSE write, or an ending WebSocket its last messages, "
        "before its socket is dropped: a client that stopped reading holds its connection slot no longer.",
    )
    reconnect_max_seconds: float = Field(
        default=30.0, gt=0, description="Cap of the web half's exponential backoff while Redis is down."
    )
    history_batch: int = Field(default=500, gt=0, description="Entries fetched per XRANGE call when sending history.")
    connection_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Lease of a connection in the Redis per-user count, renewed every third of it; a web process "
        "that dies without cleaning up stops holding its users' slots after at most this long.",
    )
    cancel_terminate: bool = Field(
        default=True,
        description="Whether cancelling an operation also terminates tasks already running (prefork workers), "
        "not only revokes queued ones.",
    )
    cancel_signal: str = Field(
        default="SIGTERM",
        pattern=r"^SIG[A-Z0-9]+$",
        description="Signal sent to a running task's process when `cancel_terminate` is on.",
    )

    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port on which a Celery worker's main process serves the Prometheus metrics of all its processes "
        "(needs the `metrics` extra); unset: no endpoint. See docs/operating.md.",
    )

    @field_validator("key_prefix", mode="before")
    @classmethod
    def _no_hash_tag_in_prefix(cls, prefix: object) -> object:
        return validate_key_prefix(prefix) if isinstance(prefix, str) else prefix

    @field_validator("allowed_origins")
    @classmethod
    def _normalized_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(allowed_origin_entry(origin) for origin in origins)
