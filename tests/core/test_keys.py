"""Id, channel and key prefix validation, and the key names built from them (one cluster slot per operation)."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from pydantic import ValidationError
from redis.crc import key_slot

from celery_progress_ws import InvalidChannelName, InvalidOperationId, ProgressSettings, validate_operation_id
from celery_progress_ws._core.errors import InvalidUserDigest
from celery_progress_ws._core.keys import KeySpace, user_digest, validate_channel

BAD = ["", "x" * 129, "a b", "a\tb", "a\nb", "a\x00b", "a\x1bb", "a\x7fb", "a*", "a?", "a[b", "a]b", "a\\b", "é"]
BAD += ["{tag}", "a{b", "a}b", 7, None]


@pytest.mark.parametrize("good", ["a", "x" * 128, "3f2c-9a1e", "batch:42", "user_7.job-1"])
def test_valid_operation_ids_pass_unchanged(good: str) -> None:
    """Printable ASCII without whitespace, glob characters or braces, up to 128 characters."""
    assert validate_operation_id(good) == good


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_invalid_operation_ids_raise_a_value_error(bad: object) -> None:
    """Empty, over-long, whitespace, control, glob, backslash, brace, non-ASCII and non-string ids are refused."""
    with pytest.raises(InvalidOperationId):
        validate_operation_id(bad)
    with pytest.raises(ValueError, match="operation id"):
        validate_operation_id(bad)


def test_channels_follow_the_same_rules_with_their_own_length() -> None:
    """Channel names allow 200 characters and refuse the same characters."""
    assert validate_channel("c" * 200)
    for bad in ("", "c" * 201, "a b", "a*", "{news}", "a}"):
        with pytest.raises(InvalidChannelName):
            validate_channel(bad)


def test_keyspace_puts_the_prefix_in_front_of_every_name_and_the_id_in_its_hash_tag() -> None:
    """Each name is prefix + kind + ``{id}``, validated on the way; the per-user key holds a digest and no tag."""
    keys = KeySpace("app:")
    assert keys.stream("op") == "app:operation-progress:{op}"
    assert keys.live("op") == "app:operation-progress-live:{op}"
    assert keys.aggregate("op") == "app:operation-aggregate:{op}"
    assert keys.aggregate_parent("child") == "app:operation-parent:{child}"
    assert keys.channel_stream("news") == "app:stream:{news}"
    assert keys.channel_live("news") == "app:stream-live:{news}"
    assert keys.user_connections("alice") == "app:connections:user:" + hashlib.sha256(b"alice").hexdigest()
    assert KeySpace().stream("op") == "operation-progress:{op}"
    with pytest.raises(InvalidOperationId):
        keys.stream("a b")


UUIDS = ["0f8fad5b-d9cb-469f-a165-70867728950e", "7c9e6679-7425-40de-944b-e07fc1f90ae7"]


@pytest.mark.parametrize("operation_id", [*UUIDS, "op", "batch:42"])
def test_keys_of_one_operation_share_the_slot_of_its_id(operation_id: str) -> None:
    """Stream, live channel and aggregate hash of an operation hash to one slot: the slot of the id itself."""
    keys = KeySpace("app:")
    names = [keys.stream(operation_id), keys.live(operation_id), keys.aggregate(operation_id)]
    assert {key_slot(name.encode()) for name in names} == {key_slot(operation_id.encode())}
    assert key_slot(keys.aggregate_parent(operation_id).encode()) == key_slot(operation_id.encode())


def test_a_custom_channel_s_stream_and_live_channel_share_a_slot() -> None:
    """A channel's stream and its live channel carry the channel name as their tag."""
    keys = KeySpace("app:")
    assert key_slot(keys.channel_stream("news").encode()) == key_slot(keys.channel_live("news").encode())
    assert key_slot(keys.channel_stream("news").encode()) == key_slot(b"news")


def test_default_celery_task_ids_spread_over_slots() -> None:
    """Two uuid4 task ids land in different slots, and 1000 of them use more than 900 distinct slots."""
    keys = KeySpace("app:")
    first, second = (key_slot(keys.stream(operation_id).encode()) for operation_id in UUIDS)
    assert first != second
    many = {key_slot(keys.stream(str(uuid.UUID(int=index * 7919 + 1, version=4))).encode()) for index in range(1000)}
    assert len(many) > 900


def test_the_prefix_takes_no_part_in_the_slot() -> None:
    """Whatever the prefix, an operation's keys stay in the slot of its id."""
    assert key_slot(KeySpace("a:").stream("op").encode()) == key_slot(KeySpace("other-app:").stream("op").encode())


@pytest.mark.parametrize("prefix", ["{app}:", "app{", "app}:"])
def test_braces_in_the_key_prefix_are_refused(prefix: str) -> None:
    """A prefix holding a brace would hijack the hash tag: settings and KeySpace refuse it, naming the braces."""
    with pytest.raises(ValidationError, match=r"contains \{ or \}"):
        ProgressSettings(key_prefix=prefix)
    with pytest.raises(ValueError, match=r"contains \{ or \}"):
        KeySpace(prefix)


def test_a_user_s_history_keys_share_the_slot_of_their_digest_and_never_hold_the_user_id() -> None:
    """Summaries, index, feed and feed channel of a user carry sha256(user id) as tag; the owner key the op's."""
    keys = KeySpace("app:")
    digest = user_digest("alice@example.com")
    assert digest == hashlib.sha256(b"alice@example.com").hexdigest()
    names = [keys.user_summaries(digest), keys.user_index(digest), keys.user_feed(digest), keys.user_feed_live(digest)]
    assert {key_slot(name.encode()) for name in names} == {key_slot(digest.encode())}
    assert all("alice" not in name for name in names)
    assert keys.user_index(digest) == f"app:operations-index:user:{{{digest}}}"
    assert keys.operation_owner("op") == "app:operation-owner:{op}"
    with pytest.raises(InvalidUserDigest):
        keys.user_feed("alice")
