"""Validation of user-supplied names (ids, channels, entry types) and the one place where Redis keys are built.

Every key and channel of one operation carries the operation id as a Redis Cluster hash tag (``{<id>}``), so they
share one slot and one Lua script may touch them all; a custom channel's stream and live channel share its name's tag.
``{`` and ``}`` are therefore refused in operation ids, channel names and the key prefix. A user id never appears in a
key: its SHA-256 digest does, and every key of one user carries that digest as its hash tag.
"""

from __future__ import annotations

import hashlib
import re

from .errors import InvalidChannelName, InvalidEntryType, InvalidOperationId, InvalidUserDigest

MAX_OPERATION_ID_LENGTH = 128
MAX_CHANNEL_LENGTH = 200

# Doubled braces are literal: "{{{operation_id}}}" becomes "{abc}", the hash tag.
STREAM_TEMPLATE = "operation-progress:{{{operation_id}}}"
LIVE_TEMPLATE = "operation-progress-live:{{{operation_id}}}"
CHANNEL_STREAM_TEMPLATE = "stream:{{{channel}}}"
CHANNEL_LIVE_TEMPLATE = "stream-live:{{{channel}}}"
AGGREGATE_TEMPLATE = "operation-aggregate:{{{operation_id}}}"
AGGREGATE_PARENT_TEMPLATE = "operation-parent:{{{task_id}}}"
USER_CONNECTIONS_TEMPLATE = "connections:user:{digest}"
OPERATION_OWNER_TEMPLATE = "operation-owner:{{{operation_id}}}"
USER_SUMMARIES_TEMPLATE = "operations:user:{{{digest}}}"
USER_INDEX_TEMPLATE = "operations-index:user:{{{digest}}}"
USER_FEED_TEMPLATE = "operations-feed:user:{{{digest}}}"
USER_FEED_LIVE_TEMPLATE = "operations-feed-live:user:{{{digest}}}"

ENTRY_TYPE_RULE = "1-64 characters of A-Z a-z 0-9 _ . : -"
_ENTRY_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

# Printable ASCII without whitespace, glob metacharacters (* ? [ ]), backslash or hash-tag braces ({ }).
_SAFE_NAME = re.compile(r"[^\x00-\x20\x7f-\U0010ffff*?\[\]\\{}]+")
_BRACES = frozenset("{}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def user_digest(user_id: str) -> str:
    """The SHA-256 hex digest that stands for a user in every key (the user id itself is never stored)."""
    return hashlib.sha256(str(user_id).encode("utf-8", "surrogatepass")).hexdigest()


def validate_user_digest(digest: object) -> str:
    """Return ``digest`` if it is a ``user_digest`` (64 lowercase hex characters), else raise ``InvalidUserDigest``."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidUserDigest("a user digest is 64 lowercase hexadecimal characters")
    return digest


def validate_operation_id(operation_id: object) -> str:
    """Return ``operation_id`` if it is safe inside a Redis key, else raise ``InvalidOperationId``."""
    if not isinstance(operation_id, str):
        raise InvalidOperationId(f"operation id must be a string, not {type(operation_id).__name__}")
    if not operation_id:
        raise InvalidOperationId("operation id must not be empty")
    if len(operation_id) > MAX_OPERATION_ID_LENGTH:
        raise InvalidOperationId(
            f"operation id is {len(operation_id)} characters long; the limit is {MAX_OPERATION_ID_LENGTH}"
        )
    if _BRACES.intersection(operation_id):
        raise InvalidOperationId(
            f"operation id {operation_id!r} contains {{ or }}: the library itself puts ids in Redis Cluster hash tags"
        )
    if not _SAFE_NAME.fullmatch(operation_id):
        raise InvalidOperationId(
            f"operation id {operation_id!r} contains whitespace, control, non-ASCII or glob characters"
        )
    return operation_id


def validate_channel(channel: object) -> str:
    """Return ``channel`` if it is safe inside a Redis key, else raise ``InvalidChannelName``."""
    if not isinstance(channel, str) or not channel:
        raise InvalidChannelName("channel name must be a non-empty string")
    if len(channel) > MAX_CHANNEL_LENGTH:
        raise InvalidChannelName(f"channel name is longer than {MAX_CHANNEL_LENGTH} characters")
    if _BRACES.intersection(channel):
        raise InvalidChannelName(
            f"channel name {channel!r} contains {{ or }}: the library itself puts names in Redis Cluster hash tags"
        )
    if not _SAFE_NAME.fullmatch(channel):
        raise InvalidChannelName(f"channel name {channel!r} contains whitespace, control, non-ASCII or glob characters")
    return channel


def validate_key_prefix(prefix: str) -> str:
    """Return ``prefix`` unless it holds ``{`` or ``}``, which would make part of it the hash tag of every key."""
    if _BRACES.intersection(prefix):
        raise ValueError(
            f"key_prefix {prefix!r} contains {{ or }}: the library itself puts ids in Redis Cluster hash tags"
        )
    return prefix


def is_valid_entry_type(entry_type: object) -> bool:
    """Whether ``entry_type`` may name an entry: it becomes an SSE ``event:`` line, so no whitespace or line breaks."""
    return isinstance(entry_type, str) and _ENTRY_TYPE.fullmatch(entry_type) is not None


def validate_entry_type(entry_type: object) -> str:
    """Return ``entry_type`` if it is valid (the one rule for every writer and reader), else ``InvalidEntryType``."""
    if not is_valid_entry_type(entry_type):
        shown = entry_type[:80] if isinstance(entry_type, str) else entry_type
        raise InvalidEntryType(f"entry type must be {ENTRY_TYPE_RULE}, not {shown!r}")
    return entry_type  # type: ignore[return-value]  # a str: is_valid_entry_type checked it


class KeySpace:
    """Builds validated key and channel names under one prefix, each operation's and channel's in one cluster slot."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "") -> None:
        self.prefix = validate_key_prefix(prefix)

    def stream(self, operation_id: str) -> str:
        """The stream holding an operation's entries."""
        return self.prefix + STREAM_TEMPLATE.format(operation_id=validate_operation_id(operation_id))

    def live(self, operation_id: str) -> str:
        """The pub/sub channel on which each new entry of an operation is announced."""
        return self.prefix + LIVE_TEMPLATE.format(operation_id=validate_operation_id(operation_id))

    def channel_stream(self, channel: str) -> str:
        """The stream holding a custom channel's messages."""
        return self.prefix + CHANNEL_STREAM_TEMPLATE.format(channel=validate_channel(channel))

    def channel_live(self, channel: str) -> str:
        """The pub/sub channel on which a custom channel's messages are announced."""
        return self.prefix + CHANNEL_LIVE_TEMPLATE.format(channel=validate_channel(channel))

    def user_connections(self, user_id: str) -> str:
        """The sorted set of a user's connections across web processes; the user id is hashed, never embedded."""
        return self.prefix + USER_CONNECTIONS_TEMPLATE.format(digest=user_digest(user_id))

    def operation_owner(self, operation_id: str) -> str:
        """The string holding the digest of an operation's owner; in the operation's slot."""
        return self.prefix + OPERATION_OWNER_TEMPLATE.format(operation_id=validate_operation_id(operation_id))

    def user_summaries(self, digest: str) -> str:
        """The hash of a user's operation summaries (operation id -> summary JSON)."""
        return self.prefix + USER_SUMMARIES_TEMPLATE.format(digest=validate_user_digest(digest))

    def user_index(self, digest: str) -> str:
        """The sorted set of a user's operation ids, scored by when each was queued (in microseconds: tasks sent
        within one millisecond keep their order)."""
        return self.prefix + USER_INDEX_TEMPLATE.format(digest=validate_user_digest(digest))

    def user_feed(self, digest: str) -> str:
        """The stream of a user's ``operation_update`` entries."""
        return self.prefix + USER_FEED_TEMPLATE.format(digest=validate_user_digest(digest))

    def user_feed_live(self, digest: str) -> str:
        """The pub/sub channel on which each new entry of a user's feed is announced."""
        return self.prefix + USER_FEED_LIVE_TEMPLATE.format(digest=validate_user_digest(digest))

    def aggregate(self, operation_id: str) -> str:
        """The hash holding an aggregate operation's children, counters and throttle state."""
        return self.prefix + AGGREGATE_TEMPLATE.format(operation_id=validate_operation_id(operation_id))

    def aggregate_parent(self, task_id: str) -> str:
        """The string naming the aggregate operation a child task belongs to; in the child's slot, not the parent's."""
        return self.prefix + AGGREGATE_PARENT_TEMPLATE.format(task_id=validate_operation_id(task_id))
