"""Operation id and channel validation, and the key names built from them."""

from __future__ import annotations

import pytest

from celery_progress_ws import InvalidChannelName, InvalidOperationId, validate_operation_id
from celery_progress_ws._core.keys import KeySpace, validate_channel

BAD = ["", "x" * 129, "a b", "a\tb", "a\nb", "a\x00b", "a\x1bb", "a\x7fb", "a*", "a?", "a[b", "a]b", "a\\b", "é"]
BAD += [7, None]


@pytest.mark.parametrize("good", ["a", "x" * 128, "3f2c-9a1e", "batch:42", "user_7.job-1", "{tag}"])
def test_valid_operation_ids_pass_unchanged(good: str) -> None:
    """Printable ASCII without whitespace or glob characters, up to 128 characters."""
    assert validate_operation_id(good) == good


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_invalid_operation_ids_raise_a_value_error(bad: object) -> None:
    """Empty, over-long, whitespace, control, glob, backslash, non-ASCII and non-string ids are refused."""
    with pytest.raises(InvalidOperationId):
        validate_operation_id(bad)
    with pytest.raises(ValueError, match="operation id"):
        validate_operation_id(bad)


def test_channels_follow_the_same_rules_with_their_own_length() -> None:
    """Channel names allow 200 characters and refuse the same characters."""
    assert validate_channel("c" * 200)
    for bad in ("", "c" * 201, "a b", "a*"):
        with pytest.raises(InvalidChannelName):
            validate_channel(bad)


def test_keyspace_puts_the_prefix_in_front_of_every_name() -> None:
    """The seed's key names, behind the optional global prefix, validated on the way."""
    keys = KeySpace("app:")
    assert keys.stream("op") == "app:operation-progress:op"
    assert keys.live("op") == "app:operation-progress-live:op"
    assert keys.channel_stream("news") == "app:stream:news"
    assert keys.channel_live("news") == "app:stream-live:news"
    assert KeySpace().stream("op") == "operation-progress:op"
    with pytest.raises(InvalidOperationId):
        keys.stream("a b")
