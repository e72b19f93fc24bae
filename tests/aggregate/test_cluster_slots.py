"""The library's scripts on a real Redis Cluster: each call of one operation touches keys of one slot only, so the
append script, aggregate registration and aggregate updates run through a plain redis-py cluster client."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from celery_progress_ws import ProgressSettings
from celery_progress_ws._aggregate.scripts import UPDATE_SCRIPT
from celery_progress_ws._aggregate.track import _register, update_args, update_keys
from celery_progress_ws._core.append import (
    APPEND_SCRIPT,
    OperationAppender,
    PublishCommand,
    channel_append,
    script_arguments,
)
from celery_progress_ws._core.keys import KeySpace
from devtools.cluster import PrivateCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster_settings() -> ProgressSettings:
    """Settings under a prefix of this test's own (the private cluster is thrown away after the module)."""
    return ProgressSettings(key_prefix=f"cpws-cluster:{uuid.uuid4().hex[:12]}:", throttle_seconds=0)


def entries(client: RedisCluster, stream: str) -> list[dict[str, Any]]:
    """The decoded entries of a stream, oldest first."""
    return [json.loads(fields["message"]) for _, fields in client.xrange(stream)]


def test_append_script_writes_an_operation_and_a_channel_on_the_cluster(
    redis_cluster: PrivateCluster, cluster_client: RedisCluster
) -> None:
    """EVALSHA of the append script for a uuid4 operation and for a custom channel lands in their streams."""
    keys = KeySpace("cpws-cluster:")
    operation = str(uuid.uuid4())
    append = cluster_client.register_script(APPEND_SCRIPT)
    for call in (
        OperationAppender(keys, operation, maxlen=10)('{"n":1}', ttl=60),
        channel_append(keys, "news", '{"n":2}', ttl=60, maxlen=10),
    ):
        append(keys=call.keys, args=script_arguments(call, PublishCommand.SPUBLISH))
    assert entries(cluster_client, keys.stream(operation)) == [{"n": 1}]
    assert entries(cluster_client, keys.channel_stream("news")) == [{"n": 2}]
    owner = redis_cluster.nodes[redis_cluster.primary_for_key(keys.stream(operation))]
    assert owner.command("EXISTS", keys.stream(operation)) == 1


def test_aggregate_registration_and_updates_run_on_the_cluster(
    cluster_client: RedisCluster, cluster_settings: ProgressSettings
) -> None:
    """track()'s registration pipeline (REGISTER_SCRIPT plus child links in many slots) and UPDATE_SCRIPT for every
    child event run without CROSSSLOT, and the aggregate ends `completed` at 100 %."""
    keys = KeySpace(cluster_settings.key_prefix)
    operation = str(uuid.uuid4())
    children = [str(uuid.uuid4()) for _ in range(20)]
    assert len({key_slot(keys.aggregate_parent(child).encode()) for child in children}) > 1

    _register(cluster_settings, keys, operation, "group", children, [False] * 20, [1.0] * 20, client=cluster_client)

    assert [cluster_client.get(keys.aggregate_parent(child)) for child in children] == [operation] * 20
    started = entries(cluster_client, keys.stream(operation))
    assert [entry["type"] for entry in started] == ["aggregate_started"]
    assert started[0]["data"]["children"] == children
    for child in children:
        for event in ("started", "completed"):
            args = update_args(cluster_settings, operation, child, event)
            written = cluster_client.eval(
                UPDATE_SCRIPT, 2, *update_keys(cluster_settings, operation), *args, PublishCommand.SPUBLISH
            )
            assert written[0] == 1
    final = entries(cluster_client, keys.stream(operation))[-1]
    assert (final["type"], final["data"]["status"], final["data"]["progress_percentage"]) == (
        "status_update",
        "completed",
        100,
    )


def test_aggregate_cancel_runs_on_the_cluster(cluster_client: RedisCluster, cluster_settings: ProgressSettings) -> None:
    """The cancel call of UPDATE_SCRIPT (what the web half's cancel route sends) ends an aggregate on the cluster."""
    keys = KeySpace(cluster_settings.key_prefix)
    operation, children = str(uuid.uuid4()), [str(uuid.uuid4()), str(uuid.uuid4())]
    _register(cluster_settings, keys, operation, "chain", children, [True, True], [1.0, 1.0], client=cluster_client)

    args = update_args(cluster_settings, operation, "", "cancel", message="stop")
    assert (
        cluster_client.eval(
            UPDATE_SCRIPT, 2, *update_keys(cluster_settings, operation), *args, PublishCommand.SPUBLISH
        )[0]
        == 1
    )

    assert cluster_client.hget(keys.aggregate(operation), "status") == "cancelled"
    assert entries(cluster_client, keys.stream(operation))[-1]["data"]["status"] == "cancelled"
