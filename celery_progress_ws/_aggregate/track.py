"""``track()``: run a group, chord or chain as one aggregate operation whose stream gets overall progress.

Each child task keeps its own stream. ``track`` stamps every leaf signature with a message header naming the
operation (so a worker finds a child's parent without a Redis read), freezes the canvas to learn the child ids,
registers the aggregate in one pipelined round trip and applies the signature. The arithmetic happens later, in
Redis, in ``UPDATE_SCRIPT`` (see ``scripts``), called by the worker hooks in ``_worker.aggregate_updater``.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
from celery.canvas import Signature, _chain, chord, group
from redis.cluster import RedisCluster

from .._core.append import publish_command, script_arguments
from .._core.clients import AsyncClient, registration_client
from .._core.codec import encode_entry, make_entry
from .._core.history import RECORD_SCRIPT, UserHistory
from .._core.keys import MAX_OPERATION_ID_LENGTH, KeySpace, user_digest, validate_operation_id
from .._core.schemas import utc_now_iso
from .._core.settings import ProgressSettings
from .scripts import REGISTER_SCRIPT, UPDATE_SCRIPT

AGGREGATE_HEADER = "cpws_aggregate"
"""Message header, set on every child of a tracked canvas, holding the aggregate operation id."""

AGGREGATE_STARTED = "aggregate_started"
AGGREGATE_CHILDREN = "aggregate_children"
"""Follow-up entries carrying the rest of the child ids when they do not fit in ``aggregate_started``."""

Leaf = tuple[Signature[Any], bool]


def track(
    signature: Signature[Any],
    operation_id: str | None = None,
    *,
    weights: Sequence[float] | None = None,
    settings: ProgressSettings | None = None,
    client: redis.Redis | RedisCluster | None = None,
    owner: str | None = None,
) -> str:
    """Apply a group, chord or chain (nesting allowed) as one aggregate operation and return its id.

    ``weights`` gives one positive weight per child task in canvas order (chain steps in order, a chord's header
    then its body); children weigh the same by default. ``settings`` default to ``ProgressSettings()``. The
    registration uses ``client`` if given (its own timeouts and retries then apply; a ``RedisCluster`` works too),
    else a connection opened and closed for the call. ``owner``, a user id, records the operation in that user's
    history as one operation (see docs/ownership.md); the workers keep its summary current.
    """
    settings = settings if settings is not None else ProgressSettings()
    operation_id = validate_operation_id(operation_id if operation_id is not None else uuid.uuid4().hex)
    if not isinstance(signature, group | _chain | chord):
        raise TypeError(f"track() takes a group, chord or chain, not {type(signature).__name__}")
    keys = KeySpace(settings.key_prefix)
    leaves = _leaves(signature, required=not isinstance(signature, group))
    for leaf, _ in leaves:  # ids are given here, so whatever freeze() and apply_async() clone keeps them
        headers = dict(leaf.options.get("headers") or {})
        headers[AGGREGATE_HEADER] = operation_id
        leaf.set(headers=headers, task_id=str(leaf.options.get("task_id") or uuid.uuid4()))
    signature.freeze()
    children = [str(leaf.options["task_id"]) for leaf, _ in leaves]
    if len(set(children)) != len(children):
        raise ValueError("track() needs distinct child task ids")
    child_weights = _weights(weights, len(children))
    required = [req for _, req in leaves]
    kind = _kind(signature)
    _register(settings, keys, operation_id, kind, children, required, child_weights, client=client, owner=owner)
    signature.apply_async()
    return operation_id


async def cancel_aggregate_async(
    operation_id: str, settings: ProgressSettings, client: AsyncClient, message: str = "Operation cancelled"
) -> bool:
    """Mark an aggregate operation ``cancelled`` and write its terminal entries; ``False`` if it already ended.

    How the web half's cancel route ends an aggregate; children already running keep running.
    """
    keys = update_keys(settings, operation_id)
    args = update_args(settings, operation_id, "", "cancel", message=message)
    result = await client.eval(UPDATE_SCRIPT, 2, *keys, *args, publish_command(client))
    return bool(result[0] == 1)


async def aggregate_children_async(
    operation_id: str, settings: ProgressSettings, client: AsyncClient
) -> list[str] | None:
    """The child task ids of an aggregate operation, or ``None`` if it is not one: how the web half's cancel route
    finds the tasks to revoke."""
    raw = await client.hget(KeySpace(settings.key_prefix).aggregate(operation_id), "children")
    return None if raw is None else list(json.loads(raw))


def update_keys(settings: ProgressSettings, operation_id: str) -> list[str]:
    """KEYS of ``UPDATE_SCRIPT`` for one operation."""
    keys = KeySpace(settings.key_prefix)
    return [keys.aggregate(operation_id), keys.stream(operation_id)]


def update_args(
    settings: ProgressSettings,
    operation_id: str,
    child: str,
    event: str,
    fraction: float | None = None,
    error_type: str = "",
    message: str = "",
) -> list[str | int | float]:
    """ARGV of ``UPDATE_SCRIPT``: one child event (or ``flush``/``cancel`` with an empty child)."""
    return [
        child,
        event,
        "" if fraction is None else repr(float(fraction)),
        int(settings.throttle_seconds * 1000),
        settings.stream_maxlen,
        settings.stream_ttl_seconds,
        settings.completed_ttl_seconds,
        settings.failed_ttl_seconds,
        KeySpace(settings.key_prefix).live(operation_id),
        utc_now_iso(),
        error_type,
        message,
    ]


def _leaves(signature: Signature[Any], required: bool) -> list[Leaf]:
    """Every task signature in canvas order, with whether the operation cannot complete without it."""
    if isinstance(signature, chord):
        return _leaves(group(signature.tasks), True) + _leaves(signature.body, True)
    if isinstance(signature, group):
        return [leaf for task in signature.tasks for leaf in _leaves(task, required)]
    if isinstance(signature, _chain):
        return [leaf for task in signature.tasks for leaf in _leaves(task, True)]
    return [(signature, required)]


def _kind(signature: Signature[Any]) -> str:
    if isinstance(signature, chord):
        return "chord"
    return "group" if isinstance(signature, group) else "chain"


def _weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    values = [float(weight) for weight in weights]
    if len(values) != count:
        raise ValueError(f"track() got {len(values)} weights for {count} child tasks")
    if not all(math.isfinite(value) and value > 0 for value in values):
        raise ValueError("weights must be positive finite numbers")
    return values


def _register(
    settings: ProgressSettings,
    keys: KeySpace,
    operation_id: str,
    kind: str,
    children: list[str],
    required: list[bool],
    weights: list[float],
    *,
    client: redis.Redis | RedisCluster | None = None,
    owner: str | None = None,
) -> None:
    """Create the hash, the child->parent keys and the ``aggregate_started`` entries in one pipelined round trip;
    with an ``owner``, also its owner key and the ``queued`` summary in the owner's history.

    The pipeline is not a transaction: the hash, the stream and the live channel share the operation's slot, so
    ``REGISTER_SCRIPT`` runs on one node of a cluster, while each child's link is a SET of its own in the child's slot.

    Without a ``client``, one is opened for the call (``_core.clients.registration_client``) and closed after it.
    """
    hash_key = keys.aggregate(operation_id)
    fields: dict[str, str | int] = {
        "kind": kind,
        "total": len(children),
        "tw": repr(sum(weights)),
        "sum": "0",
        "queued": len(children),
        "started": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "last_ms": 0,
        "dirty": "0",
        "children": json.dumps(children),
    }
    for child, weight, req in zip(children, weights, required, strict=True):
        fields["c:" + child] = f"q|0|{weight!r}|{int(req)}"
    digest = user_digest(owner) if owner is not None else None
    if digest is not None:
        fields["owner"] = digest
    ttl = settings.stream_ttl_seconds
    target = client if client is not None else registration_client(settings)
    pipe = target.pipeline(transaction=False)
    try:
        pipe.delete(hash_key)
        pipe.hset(hash_key, mapping=fields)  # type: ignore[arg-type]
        for child in children:
            pipe.set(keys.aggregate_parent(child), operation_id, ex=ttl)
        messages = _started_messages(settings, kind, children)
        stream = keys.stream(operation_id)
        live = keys.live(operation_id)
        publish = publish_command(target)
        # As a plain command: a cluster client's pipeline has no eval() but routes EVAL by its keys like any command.
        pipe.execute_command(
            "EVAL", REGISTER_SCRIPT, 2, hash_key, stream, settings.stream_maxlen, ttl, live, ttl, publish, *messages
        )
        if digest is not None:
            pipe.set(keys.operation_owner(operation_id), digest, ex=settings.history_ttl_seconds)
            patch = {"status": "queued", "task_name": kind, "message": f"{kind.capitalize()} queued"}
            record = UserHistory(settings).record(digest, operation_id, patch, utc_now_iso())
            pipe.execute_command(
                "EVAL", RECORD_SCRIPT, len(record.keys), *record.keys, *script_arguments(record, publish)
            )
        pipe.execute()
    finally:
        pipe.reset()
        if target is not client:
            target.close()


def _started_messages(settings: ProgressSettings, kind: str, children: list[str]) -> list[str]:
    """``aggregate_started`` (kind, total, first ids), then ``aggregate_children`` entries for ids that did not fit."""
    per_entry = max(1, (settings.max_entry_bytes - 512) // (MAX_OPERATION_ID_LENGTH + 3))
    chunks = [children[start : start + per_entry] for start in range(0, len(children), per_entry)] or [[]]
    stamp = utc_now_iso()
    first = {"kind": kind, "total_children": len(children), "children": chunks[0], "complete": len(chunks) == 1}
    messages = [encode_entry(make_entry(AGGREGATE_STARTED, first, stamp), settings.max_entry_bytes)]
    for index, chunk in enumerate(chunks[1:], start=1):
        data = {"offset": index * per_entry, "children": chunk, "complete": index == len(chunks) - 1}
        messages.append(encode_entry(make_entry(AGGREGATE_CHILDREN, data, stamp), settings.max_entry_bytes))
    return messages
