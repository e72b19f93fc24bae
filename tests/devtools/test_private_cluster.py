"""The private Redis Cluster and Sentinel sets behave like real ones: plain redis-py clients (no library code) route,
fail over, follow slot migrations and use sharded pub/sub against them."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.sentinel import Sentinel

from devtools._server_process import ServerStartError, wait_until
from devtools.cluster import PrivateCluster
from devtools.sentinel import PrivateSentinelSet
from devtools.servers import redis_answers

pytestmark = pytest.mark.integration


def key_on_shard(cluster: PrivateCluster, shard: int, label: str) -> str:
    """A fresh key that the shard's current primary serves."""
    primary = cluster.primary_of(shard)
    return next(
        key for index in range(10_000) if cluster.primary_for_key(key := f"cpws-cluster:{label}:{index}") == primary
    )


def write_replicated(cluster: PrivateCluster, key: str, value: str) -> None:
    """Write ``key`` on its primary and wait until every replica of that primary has it too."""
    node = cluster.nodes[cluster.primary_for_key(key)]
    with node.client() as client:
        client.set(key, value)
        assert client.wait(cluster.replicas, 10_000) == cluster.replicas


def test_cluster_routes_keys_to_every_primary(redis_cluster: PrivateCluster, cluster_client: RedisCluster) -> None:
    """A cluster client spreads keys over all three primaries and each key lives on the primary that owns its slot."""
    keys = [f"cpws-cluster:spread:{uuid.uuid4().hex}:{index}" for index in range(60)]
    for key in keys:
        cluster_client.set(key, key[::-1])
    owners = {key: redis_cluster.primary_for_key(key) for key in keys}
    assert set(owners.values()) == {redis_cluster.primary_of(shard) for shard in range(3)}
    for key, owner in owners.items():
        assert redis_cluster.nodes[owner].command("GET", key) == key[::-1]
    assert redis_cluster.url.startswith("redis+cluster://127.0.0.1:")
    assert len(redis_cluster.url.split(",")) == 6


def test_killed_primary_is_replaced_by_its_replica(redis_cluster: PrivateCluster, cluster_client: RedisCluster) -> None:
    """After its primary is SIGKILLed the shard's replica serves its slots and a cluster client keeps writing."""
    key = key_on_shard(redis_cluster, 0, f"kill-{uuid.uuid4().hex}")
    write_replicated(redis_cluster, key, "before")
    assert cluster_client.get(key) == "before"
    replica = redis_cluster.replicas_of(0)[0]

    killed = redis_cluster.kill_primary(0)

    assert not redis_cluster.nodes[killed].alive
    assert redis_cluster.primary_of(0) == replica
    assert cluster_client.get(key) == "before"
    cluster_client.set(key, "after")
    assert redis_cluster.nodes[replica].command("GET", key) == "after"

    redis_cluster.restart_node(killed)
    assert redis_cluster.replicas_of(0) == [killed]


def test_cluster_failover_promotes_the_replica(redis_cluster: PrivateCluster, cluster_client: RedisCluster) -> None:
    """CLUSTER FAILOVER swaps a shard's primary and replica and a cluster client follows the MOVED redirect."""
    key = key_on_shard(redis_cluster, 1, f"failover-{uuid.uuid4().hex}")
    cluster_client.set(key, "kept")
    old_primary, replica = redis_cluster.primary_of(1), redis_cluster.replicas_of(1)[0]

    redis_cluster.failover(replica)

    assert redis_cluster.primary_of(1) == replica
    assert redis_cluster.replicas_of(1) == [old_primary]
    assert cluster_client.get(key) == "kept"
    cluster_client.set(key, "written after")
    assert redis_cluster.nodes[replica].command("GET", key) == "written after"


def test_slot_migration_mid_writes_keeps_keys_readable(
    redis_cluster: PrivateCluster, cluster_client: RedisCluster
) -> None:
    """While a slot moves key by key, reads and writes through a cluster client (ASK redirects) see every key."""
    source, target = redis_cluster.primary_of(0), redis_cluster.primary_of(2)
    tag = next(tag for index in range(10_000) if redis_cluster.primary_for_key(tag := f"{{mig{index}}}") == source)
    base = f"cpws-cluster:{tag}:{uuid.uuid4().hex}"
    keys = [f"{base}:{index}" for index in range(10)]
    for key in keys:
        cluster_client.set(key, "0")
    written: list[str] = []

    def read_and_write_mid_migration(moved: list[str]) -> None:
        with redis_cluster.nodes[target].client() as importing:  # an importing node answers after ASKING only
            importing.execute_command("ASKING")
            assert importing.exists(*moved) == len(moved)
        for key in keys:
            cluster_client.incr(key)
        written.append(new := f"{base}:new:{len(written)}")
        cluster_client.set(new, "new")

    redis_cluster.migrate_slot(key_slot(tag.encode()), to_shard=2, batch=3, on_batch=read_and_write_mid_migration)

    assert len(written) >= 3
    assert redis_cluster.primary_for_key(keys[0]) == target
    assert cluster_client.mget(keys) == [str(len(written))] * len(keys)
    assert cluster_client.mget(written) == ["new"] * len(written)
    assert redis_cluster.nodes[target].command("EXISTS", *keys, *written) == len(keys) + len(written)


async def test_sharded_pubsub_through_async_cluster_client(redis_cluster: PrivateCluster) -> None:
    """SSUBSCRIBE with the async cluster client's pub/sub receives what SPUBLISH sends to the channel's shard."""
    client = AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in redis_cluster.addresses], decode_responses=True
    )
    channel = f"cpws-cluster:shard-channel:{uuid.uuid4().hex}"
    pubsub = client.pubsub()
    try:
        await client.initialize()  # pubsub routes by the slot map, which the client loads on its first command only
        await pubsub.ssubscribe(channel)
        async with asyncio.timeout(10):
            while (confirmation := await pubsub.get_sharded_message(timeout=1)) is None:
                pass
        assert confirmation["type"] == "ssubscribe"
        assert await client.spublish(channel, "hello") == 1
        async with asyncio.timeout(10):
            while (message := await pubsub.get_sharded_message(timeout=1)) is None:
                pass
        assert (message["type"], message["channel"], message["data"]) == ("smessage", channel, "hello")
    finally:
        await pubsub.aclose()
        await client.aclose()


@pytest.fixture
def sentinel_client(sentinel_set: PrivateSentinelSet) -> Iterator[Sentinel]:
    """A plain redis-py Sentinel of the private set's three sentinels."""
    sentinel = Sentinel(sentinel_set.sentinel_addresses, socket_timeout=2)
    try:
        yield sentinel
    finally:
        for client in sentinel.sentinels:
            client.close()


def test_sentinel_master_for_follows_a_failover(sentinel_set: PrivateSentinelSet, sentinel_client: Sentinel) -> None:
    """When the master is SIGKILLed the sentinels promote a replica and ``master_for`` writes to it."""
    master = sentinel_client.master_for(sentinel_set.service_name, socket_timeout=2, decode_responses=True)
    key = f"cpws-sentinel:{uuid.uuid4().hex}"
    try:
        master.set(key, "before")
        assert master.wait(2, 10_000) == 2
        old_address = sentinel_set.master_address()

        sentinel_set.kill_master()

        new_address = sentinel_set.master_address()
        assert new_address != old_address
        assert sentinel_client.discover_master(sentinel_set.service_name) == new_address
        assert master.get(key) == "before"
        master.set(key, "after")
        with sentinel_set.master_client() as direct:
            assert direct.get(key) == "after"
    finally:
        master.close()


def test_old_master_restarted_empty_becomes_a_replica(
    sentinel_set: PrivateSentinelSet, sentinel_client: Sentinel
) -> None:
    """A killed master that comes back empty on its port is made a replica of the new master and copies its data."""
    master = sentinel_client.master_for(sentinel_set.service_name, socket_timeout=2, decode_responses=True)
    key = f"cpws-sentinel:{uuid.uuid4().hex}"
    try:
        master.set(key, "kept")
        assert master.wait(2, 10_000) == 2
        killed = sentinel_set.kill_master()

        sentinel_set.restart_old_master_empty(killed)

        old = sentinel_set.data_nodes[killed]
        assert old.info("replication")["role"] == "slave"
        assert (old.info("replication")["master_port"],) == (sentinel_set.master_address()[1],)
        wait_until(lambda: old.command("GET", key) == "kept", 10, "the old master has copied the data")
        assert master.get(key) == "kept"
    finally:
        master.close()


def test_private_sets_stop_every_process_and_remove_their_files() -> None:
    """Closing a sentinel set stops each of its processes by pid and removes its directories."""
    with PrivateSentinelSet(replicas=1) as sentinels:
        processes = [*sentinels.data_nodes, *sentinels.sentinels]
        assert all(process.alive for process in processes)
    assert not any(process.alive or process.directory.exists() for process in processes)
    assert not any(redis_answers(process.url) for process in processes)


def test_cluster_that_fails_to_form_stops_the_nodes_it_started() -> None:
    """A node that cannot start (its port is taken) makes forming fail, and every node started so far is stopped."""
    cluster = PrivateCluster(primaries=2, replicas=1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cluster.nodes[3].port))
        squatter.listen()
        with pytest.raises(ServerStartError):
            cluster.start(timeout=10)
    assert not any(node.alive or node.directory.exists() or redis_answers(node.url) for node in cluster.nodes[:3])
