"""The one stream write: XADD + EXPIRE + PUBLISH (SPUBLISH on a cluster) in one EVALSHA, on a dedicated connection
or through a given client."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from celery_progress_ws._core.append import (
    APPEND_SCRIPT,
    ConnectionAppend,
    OperationAppender,
    PublishCommand,
    ScriptAppend,
    publish_command,
    retried,
    script_arguments,
)
from celery_progress_ws._core.keys import KeySpace
from devtools.servers import PrivateRedis

pytestmark = pytest.mark.integration


@pytest.fixture
def own_connection(redis_url: str) -> Iterator[redis.Redis]:
    """A single-connection client whose connection the append runner drives directly."""
    client = redis.Redis.from_url(redis_url, single_connection_client=True, socket_timeout=2)
    try:
        yield client
    finally:
        client.close()


def direct_append(client: redis.Redis) -> ConnectionAppend:
    """The append runner on ``client``'s single connection."""
    assert client.connection is not None
    return ConnectionAppend(client.connection)


def messages(client: redis.Redis, key: str) -> list[str]:
    """The ``message`` field of every entry of a stream (``client`` decodes responses)."""
    return [fields["message"] for _, fields in client.xrange(key)]


def test_connection_append_writes_expires_and_announces_with_the_stream_id(
    own_connection: redis.Redis, redis_client: redis.Redis, key_prefix: str
) -> None:
    """One call: the entry is in the stream, the stream has its TTL, and the live channel got "<id> <json>"."""
    keys = KeySpace(key_prefix)
    append = direct_append(own_connection)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.live("op-1"))
    assert pubsub.get_message(timeout=2) is not None  # the subscribe confirmation
    append(OperationAppender(keys, "op-1", maxlen=3)('{"n":1}', ttl=120))

    [(entry_id, fields)] = redis_client.xrange(keys.stream("op-1"))
    assert fields == {"message": '{"n":1}'}
    assert 0 < redis_client.ttl(keys.stream("op-1")) <= 120
    announced = pubsub.get_message(timeout=2)
    assert announced is not None
    assert announced["data"] == f'{entry_id} {{"n":1}}'
    pubsub.close()


def test_connection_append_trims_to_maxlen(
    own_connection: redis.Redis, redis_client: redis.Redis, key_prefix: str
) -> None:
    """The stream keeps exactly the newest maxlen entries."""
    keys = KeySpace(key_prefix)
    append = direct_append(own_connection)
    appender = OperationAppender(keys, "op-2", maxlen=3)
    for n in range(5):
        append(appender(f'{{"n":{n}}}', ttl=60))
    assert messages(redis_client, keys.stream("op-2")) == ['{"n":2}', '{"n":3}', '{"n":4}']


def test_connection_append_loads_the_script_into_a_server_that_lost_it(private_redis: PrivateRedis) -> None:
    """After SCRIPT FLUSH (as after a restart) the runner loads the script once and the write still lands."""
    client = redis.Redis.from_url(private_redis.url, single_connection_client=True, decode_responses=True)
    try:
        append = direct_append(client)
        appender = OperationAppender(KeySpace("t:"), "op", maxlen=10)
        append(appender('{"n":1}', ttl=60))
        client.script_flush()  # this private server's scripts only
        append(appender('{"n":2}', ttl=60))
        assert messages(client, KeySpace("t:").stream("op")) == ['{"n":1}', '{"n":2}']
    finally:
        client.close()


def test_connection_append_reconnects_once_after_the_server_dropped_it(
    own_connection: redis.Redis, redis_client: redis.Redis, key_prefix: str
) -> None:
    """A connection the server closed is reopened once, and the entry is written exactly once."""
    keys = KeySpace(key_prefix)
    append = direct_append(own_connection)
    appender = OperationAppender(keys, "op-3", maxlen=10)
    append(appender('{"n":1}', ttl=60))
    own_id = own_connection.client_id()
    assert redis_client.client_kill_filter(_id=own_id) == 1
    append(appender('{"n":2}', ttl=60))  # the first send meets a closed socket; the reconnect writes it once
    assert messages(redis_client, keys.stream("op-3")) == ['{"n":1}', '{"n":2}']
    assert own_connection.client_id() != own_id


def test_connection_append_closes_a_timed_out_connection_so_a_late_reply_is_never_misread(
    private_redis: PrivateRedis,
) -> None:
    """A timed-out call leaves no stale reply behind: the next call and a PING read their own answers."""
    client = redis.Redis.from_url(private_redis.url, single_connection_client=True, socket_timeout=0.3)
    admin = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        append = direct_append(client)
        appender = OperationAppender(KeySpace("t:"), "op", maxlen=10)
        append(appender('{"n":1}', ttl=60))
        admin.client_pause(1500, all=False)  # write commands (our script writes) wait; the reply comes too late
        with pytest.raises(RedisTimeoutError):
            append(appender('{"n":2}', ttl=60))
        admin.client_unpause()
        # Whether or not the server ran the timed-out call, the next write reads its own reply on a new connection.
        append(appender('{"n":3}', ttl=60))
        assert messages(admin, KeySpace("t:").stream("op")) in (
            ['{"n":1}', '{"n":3}'],
            ['{"n":1}', '{"n":2}', '{"n":3}'],
        )
        assert client.ping() is True
    finally:
        admin.close()
        client.close()


def test_script_append_runs_through_a_given_client_and_its_pool(redis_client: redis.Redis, key_prefix: str) -> None:
    """A caller's pooled client works from several threads at once through redis-py's script wrapper."""
    keys = KeySpace(key_prefix)
    append = ScriptAppend(redis_client)
    appender = OperationAppender(keys, "op-4", maxlen=10)
    threads = [threading.Thread(target=append, args=(appender(f'{{"n":{n}}}', ttl=60),)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(messages(redis_client, keys.stream("op-4"))) == [f'{{"n":{n}}}' for n in range(4)]


def test_the_append_script_announces_only_with_publish_or_spublish(redis_client: redis.Redis, key_prefix: str) -> None:
    """Any announcing command but PUBLISH or SPUBLISH (or none) is an error reply, and nothing is written."""
    keys = KeySpace(key_prefix)
    script = redis_client.register_script(APPEND_SCRIPT)
    call = OperationAppender(keys, "op-5", maxlen=10)('{"n":1}', ttl=60)
    for wrong in (["SET"], ["publish"], []):
        with pytest.raises(ResponseError, match="must be PUBLISH or SPUBLISH"):
            script(keys=call.keys, args=[*call.args, *wrong])
    assert redis_client.exists(keys.stream("op-5")) == 0
    script(keys=call.keys, args=script_arguments(call, PublishCommand.SPUBLISH))  # a one-server SPUBLISH works too
    assert messages(redis_client, keys.stream("op-5")) == ['{"n":1}']


def test_script_append_announces_with_spublish_on_a_cluster_client(
    cluster_client: RedisCluster, key_prefix: str
) -> None:
    """The runner picks the announcing command from its client: a sharded subscriber of the operation's channel on
    its primary hears a cluster client's write."""
    keys = KeySpace(key_prefix)
    assert publish_command(cluster_client) is PublishCommand.SPUBLISH
    node = cluster_client.get_node_from_key(keys.live("op-6"))
    subscriber = redis.Redis(host=node.host, port=node.port, decode_responses=True)
    pubsub = subscriber.pubsub()
    pubsub.ssubscribe(keys.live("op-6"))
    assert pubsub.get_sharded_message(timeout=2)["type"] == "ssubscribe"  # type: ignore[index]
    entry_id = ScriptAppend(cluster_client)(OperationAppender(keys, "op-6", maxlen=10)('{"n":6}', ttl=60))
    announced = pubsub.get_sharded_message(timeout=2)
    assert announced is not None
    assert announced["data"] == f'{entry_id} {{"n":6}}'
    pubsub.close()
    subscriber.close()


def test_run_many_answers_each_call_of_a_batch_in_order(
    own_connection: redis.Redis, redis_client: redis.Redis, key_prefix: str
) -> None:
    """A refused call in the middle of a batch gets its own error; the calls around it are written, in order."""
    keys = KeySpace(key_prefix)
    redis_client.set(keys.stream("wrong-type"), "not a stream")
    append = direct_append(own_connection)
    first, refused, last = (
        OperationAppender(keys, operation, maxlen=10)(f'{{"op":"{operation}"}}', ttl=60)
        for operation in ("op-a", "wrong-type", "op-a")
    )
    outcomes = append.run_many([first, refused, last])
    assert isinstance(outcomes[1], ResponseError)
    written = [outcomes[0].decode(), outcomes[2].decode()]
    assert written == [entry_id for entry_id, _ in redis_client.xrange(keys.stream("op-a"))]


def test_run_many_reloads_scripts_a_flushed_server_forgot_and_keeps_each_streams_order(
    private_redis: PrivateRedis, key_prefix: str
) -> None:
    """After SCRIPT FLUSH every call of a batch answers NOSCRIPT: the scripts are loaded and the calls run in order."""
    keys = KeySpace(key_prefix)
    client = redis.Redis.from_url(private_redis.url, single_connection_client=True, decode_responses=True)
    try:
        append = direct_append(client)
        appender = OperationAppender(keys, "op-f", maxlen=10)
        append(appender('{"n":0}', ttl=60))
        client.script_flush()
        outcomes = append.run_many([appender(f'{{"n":{n}}}', ttl=60) for n in range(1, 4)])
        assert all(isinstance(outcome, str) for outcome in outcomes)
        assert messages(client, keys.stream("op-f")) == [f'{{"n":{n}}}' for n in range(4)]
    finally:
        client.close()


def test_an_append_sent_again_finds_itself_and_is_not_written_twice(
    own_connection: redis.Redis, redis_client: redis.Redis, key_prefix: str
) -> None:
    """A retried append whose entry is already among the stream's last entries answers that entry's id; one whose
    entry is not there (it never ran) is written, once."""
    keys = KeySpace(key_prefix)
    append = direct_append(own_connection)
    appender = OperationAppender(keys, "op-r", maxlen=10)
    ran = appender('{"n":1}', ttl=60)
    first_id = append(ran)
    append(appender('{"n":2}', ttl=60))  # another entry after it, as another writer's could be
    assert append(retried(ran, 4)) == first_id
    assert append(retried(appender('{"n":3}', ttl=60), 4)) != first_id
    assert messages(redis_client, keys.stream("op-r")) == ['{"n":1}', '{"n":2}', '{"n":3}']
    assert 50 < redis_client.ttl(keys.stream("op-r")) <= 60
