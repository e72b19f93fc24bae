"""Operation ids placed on chosen shards of a private cluster, and the clients the cluster tests write with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio.cluster import RedisCluster

from celery_progress_ws import ProgressSettings
from celery_progress_ws._core.clients import async_command_client
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from devtools.cluster import PrivateCluster
from tests.support.harness import new_operation


def shard_of_operation(cluster: PrivateCluster, settings: ProgressSettings, operation: str) -> int:
    """The shard whose primary holds ``operation``'s stream now."""
    return cluster.shard_of(cluster.primary_for_key(KeySpace(settings.key_prefix).stream(operation)))


def operations_on_every_shard(cluster: PrivateCluster, settings: ProgressSettings, per_shard: int = 1) -> list[str]:
    """``per_shard`` fresh operation ids for each shard, shard by shard."""
    found: dict[int, list[str]] = {shard: [] for shard in range(cluster.primaries)}
    while any(len(ids) < per_shard for ids in found.values()):
        operation = new_operation()
        ids = found[shard_of_operation(cluster, settings, operation)]
        if len(ids) < per_shard:
            ids.append(operation)
    return [operation for shard in range(cluster.primaries) for operation in found[shard]]


@asynccontextmanager
async def cluster_publisher(settings: ProgressSettings) -> AsyncIterator[AsyncProgressPublisher]:
    """An async publisher on its own async cluster client (what the web half writes with on a cluster URL)."""
    client = async_command_client(settings)
    assert isinstance(client, RedisCluster)
    try:
        yield AsyncProgressPublisher(client, settings)
    finally:
        await client.aclose()
