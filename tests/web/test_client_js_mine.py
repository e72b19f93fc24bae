"""The browser client's listMine() and subscribeMine() under Node: against the scripted server (reconnects, fallback,
refusals exactly when wanted) and against the real router with owned operations on the test's Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_progress_ws import ProgressPublisher, ProgressSettings
from tests.support.harness import new_operation
from tests.support.js_client import FAST, MINE, ScriptedServer, docs_example, of, run_docs_example, start_node

pytestmark = pytest.mark.integration

HARNESS = """
const [clientUrl, configJson] = process.argv.slice(2);
const { listMine, subscribeMine, ProgressRequestError } = await import(clientUrl);
const config = JSON.parse(configJson);
const log = (record) => process.stdout.write(JSON.stringify(record) + "\\n");
for (const request of config.lists ?? []) {
  try {
    log({ cb: "page", page: await listMine(request) });
  } catch (error) {
    const typed = error instanceof ProgressRequestError;
    log({ cb: "refused", typed, name: error.name, status: error.status, message: error.message });
  }
}
if (!config.options) process.exit(0);
let updates = 0;
const subscription = subscribeMine({
  ...config.options,
  onMessage: (m) => log({ cb: "message", type: m.type, id: m.id ?? null }),
  onUpdate: (d, m) => {
    log({ cb: "update", operation: d.operation_id, status: d.status, pct: d.progress_percentage, id: m.id });
    updates += 1;
    if (config.closeAfterUpdates === updates) subscription.close();
  },
  onEvent: (m) => log({ cb: "event", type: m.type, id: m.id }),
  onGap: (d) => log({ cb: "gap", reason: d.reason, after_id: d.after_id }),
  onOpen: (i) => log({ cb: "open", transport: i.transport, lastEventId: i.lastEventId }),
  onError: (p) => log({ cb: "error", transport: p.transport, message: p.message, retryInMs: p.retryInMs }),
  onClose: (i) => {
    log({ cb: "close", reason: i.reason, status: i.status, code: i.code, message: i.message, last: i.lastEventId });
    setImmediate(() => process.exit(0));
  },
});
"""


def update(entry_id: str, operation: str, status: str, pct: float | None = None) -> dict[str, Any]:
    """A delivered operation_update message of the user's feed."""
    summary = {
        "operation_id": operation, "task_name": "ingest", "status": status, "progress_percentage": pct,
        "message": None, "error_type": None, "error_message": None, "queued_at": None, "started_at": None,
        "finished_at": None,
    }  # fmt: skip
    return {"id": entry_id, "timestamp": "2026-01-01T00:00:00+00:00", "type": "operation_update", "data": summary}


@contextlib.asynccontextmanager
async def mine_client(node_command: list[str], tmp_path: Path, **config: Any) -> AsyncIterator[Any]:
    """The harness running under Node with ``config``; reaped (or killed) afterwards."""
    harness = tmp_path / "mine.mjs"
    harness.write_text(HARNESS)
    process = await start_node(node_command, harness, config)
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.communicate(), 10)
        if process.returncode is None:
            process.kill()
            await process.communicate()


async def run_mine(node_command: list[str], tmp_path: Path, **config: Any) -> list[dict[str, Any]]:
    """Run the harness to its end; return the records it printed."""
    async with mine_client(node_command, tmp_path, **config) as process:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    return [json.loads(line) for line in stdout.decode().splitlines()]


async def read_until(process: Any, callback: str, count: int = 1) -> list[dict[str, Any]]:
    """Read the harness's records until ``count`` records of ``callback`` were printed."""
    records: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while sum(record["cb"] == callback for record in records) < count:
            line = await process.stdout.readline()
            assert line, (records, await process.stderr.read())
            records.append(json.loads(line))
    return records


async def test_list_mine_sends_the_filters_and_returns_the_page(
    node_command: list[str], tmp_path: Path, scripted: ScriptedServer
) -> None:
    """listMine() asks GET {prefix}/me/operations with status (comma-joined), cursor, limit and params, resolves with
    the page as sent, and rejects an error status with a ProgressRequestError carrying the status and the detail."""
    page = {"operations": [update("1-0", "op-1", "started", 40)["data"]], "next_cursor": "abc"}
    scripted.pages = [(200, page), (400, {"detail": "Unknown status: running"})]
    base = {"baseUrl": scripted.base_url, "params": {"token": "t1"}}
    lists = [{**base, "status": ["queued", "started"], "cursor": "xyz", "limit": 5}, {**base, "status": "running"}]
    records = await run_mine(node_command, tmp_path, lists=lists)
    assert records == [
        {"cb": "page", "page": page},
        {"cb": "refused", "typed": True, "name": "ProgressRequestError", "status": 400,
         "message": "Unknown status: running"},
    ]  # fmt: skip
    assert scripted.listings == [
        [("token", "t1"), ("status", "queued,started"), ("cursor", "xyz"), ("limit", "5")],
        [("token", "t1"), ("status", "running")],
    ]


async def test_the_feed_resumes_and_does_not_end_with_an_operation(
    node_command: list[str], tmp_path: Path, scripted: ScriptedServer
) -> None:
    """subscribeMine() reads /me/ws: a completed operation, even with the server's "Operation completed" close, does
    not end it; it reconnects after the last id, drops a replayed id, and ends only when refused (status stays
    null)."""
    scripted.scripts[MINE] = [
        [
            ("send", update("1-0", "op-a", "started", 10)),
            ("send", update("2-0", "op-a", "completed", 100)),
            ("close", 1000, "Operation completed"),
        ],
        [
            ("send", update("2-0", "op-a", "completed", 100)),
            ("send", update("3-0", "op-b", "queued")),
            ("close", 1013, "Client too slow"),
        ],
        [("refuse", "User connection limit exceeded")],
    ]
    options = {"baseUrl": scripted.base_url, "transport": "websocket", **FAST}
    records = await run_mine(node_command, tmp_path, options=options)
    assert [(r["operation"], r["status"], r["id"]) for r in of(records, "update")] == [
        ("op-a", "started", "1-0"),
        ("op-a", "completed", "2-0"),
        ("op-b", "queued", "3-0"),
    ]
    assert scripted.connections == [("websocket", None), ("websocket", "2-0"), ("websocket", "3-0")]
    close = records[-1]
    assert (close["cb"], close["reason"], close["status"], close["code"], close["last"]) == (
        "close", "refused", None, 1008, "3-0"
    )  # fmt: skip
    assert close["message"] == "User connection limit exceeded"


async def test_the_feed_falls_back_to_sse_with_gaps_and_stops_on_close(
    node_command: list[str], tmp_path: Path, scripted: ScriptedServer
) -> None:
    """When /me/ws cannot connect the feed reads /me/events, delivers a history_gap to onGap, resumes SSE after the
    last id, and close() ends it with reason "closed"."""
    gap = {
        "type": "history_gap",
        "timestamp": "2026-01-01T00:00:00+00:00",
        "data": {"reason": "trimmed", "after_id": "1-0", "resumes_at": "5-0"},
    }
    scripted.scripts[MINE] = [
        [("reject",)],
        [("send", gap), ("send", update("5-0", "op-c", "started", 0))],
        [("send", update("6-0", "op-c", "failed", 50)), ("hold",)],
    ]
    options = {"baseUrl": scripted.base_url, "lastEventId": "1-0", **FAST}
    records = await run_mine(node_command, tmp_path, options=options, closeAfterUpdates=2)
    assert of(records, "gap") == [{"cb": "gap", "reason": "trimmed", "after_id": "1-0"}]
    assert [(r["status"], r["id"]) for r in of(records, "update")] == [("started", "5-0"), ("failed", "6-0")]
    assert [r["transport"] for r in of(records, "open")] == ["sse", "sse"]
    assert scripted.connections == [("websocket", "1-0"), ("sse", "1-0"), ("sse", "5-0")]
    assert (records[-1]["reason"], records[-1]["last"]) == ("closed", "6-0")


async def test_docs_example_runs(node_command: list[str], tmp_path: Path, scripted: ScriptedServer) -> None:
    """The "user's own operations" example of docs/clients.md runs as written (stub DOM): it lists the running
    operation and follows its stream, and an operation the feed announces is shown and followed too."""
    scripted.pages = [(200, {"operations": [update("1-0", "op-1", "started", 40)["data"]], "next_cursor": None})]
    at = "2026-01-01T00:00:00+00:00"
    scripted.scripts["op-1"] = [
        [
            ("send", {"id": "5-0", "timestamp": at, "type": "chunking_progress", "data": {"progress_percentage": 80}}),
            ("send", {"id": "6-0", "timestamp": at, "type": "status_update", "data": {"status": "completed"}}),
            ("close", 1000, "Operation completed"),
        ]
    ]
    scripted.scripts["op-2"] = [
        [
            ("send", {"id": "1-0", "timestamp": at, "type": "status_update", "data": {"status": "completed"}}),
            ("close", 1000, "Operation completed"),
        ]
    ]
    scripted.scripts[MINE] = [
        [
            ("send", update("1-0", "op-2", "queued")),
            ("send", update("2-0", "op-1", "completed", 40)),
            ("refuse", "the test is over"),
        ]
    ]
    origin = scripted.base_url.removesuffix("/progress")
    elements = await run_docs_example(node_command, tmp_path, docs_example(mine=True), f"{origin}/page")
    lines = elements["#my-operations"]["lines"]
    assert lines[0] == "op-1 started 40% \n"
    assert sorted(lines[1:]) == sorted(
        ["op-1 80%\n", "op-1 completed\n", "op-2 queued 0% \n", "op-1 completed 40% \n", "op-2 completed\n"]
    )
    assert lines.index("op-1 80%\n") < lines.index("op-1 completed\n")
    assert scripted.listings == [[("limit", "20")]]


# --- against the real router, on the test's Redis -----------------------------------------------------------------


@pytest.fixture
def writer(web_settings: ProgressSettings) -> Iterator[ProgressPublisher]:
    """The worker half's publisher on the test's Redis, recording owners as the sender and the worker do."""
    with ProgressPublisher(web_settings) as publisher:
        yield publisher


def queued(writer: ProgressPublisher, user: str) -> str:
    """A new operation of ``user``, recorded as its sender does (a `queued` entry with the owner)."""
    operation = new_operation()
    writer.publish(operation, "status_update", {"status": "queued", "task_name": "ingest"}, owner=user)
    return operation


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_real_router_lists_and_follows_only_the_users_own_operations(
    node_command: list[str],
    tmp_path: Path,
    serve: Any,
    web_settings: ProgressSettings,
    writer: ProgressPublisher,
    transport: str,
) -> None:
    """Against the real router, listMine() returns alice's operations newest first (bob's not), and subscribeMine()
    delivers her stored updates, then live ones up to `completed`, and none of bob's."""
    server = serve(web_settings)
    older, newer = queued(writer, "alice"), queued(writer, "alice")
    queued(writer, "bob")
    base = {"baseUrl": f"{server.http}/progress", "params": {"user": "alice"}}
    options = {**base, "transport": transport, **FAST}
    async with mine_client(node_command, tmp_path, lists=[base], options=options, closeAfterUpdates=5) as node:
        records = await read_until(node, "update", 2)
        writer.own(newer, "alice")
        writer.publish(newer, "status_update", {"status": "started"})
        writer.progress(newer, 1, 2, force=True)
        queued(writer, "bob")
        writer.publish(newer, "status_update", {"status": "completed"}, final=True)
        records += await read_until(node, "close")
    page = of(records, "page")[0]["page"]
    assert [summary["operation_id"] for summary in page["operations"]] == [newer, older]
    assert page["next_cursor"] is None
    assert [(r["operation"], r["status"], r["pct"]) for r in of(records, "update")] == [
        (older, "queued", None),
        (newer, "queued", None),
        (newer, "started", None),
        (newer, "started", 50),
        (newer, "completed", 50),
    ]
    assert [r["transport"] for r in of(records, "open")] == [transport]
    assert records[-1]["reason"] == "closed"


async def test_real_router_refuses_an_anonymous_feed_and_list(
    node_command: list[str], tmp_path: Path, serve: Any, web_settings: ProgressSettings
) -> None:
    """Without a user the real router refuses both: listMine() rejects with status 401 and the feed ends refused."""
    server = serve(web_settings)
    base = {"baseUrl": f"{server.http}/progress"}
    records = await run_mine(node_command, tmp_path, lists=[base], options={**base, "transport": "sse", **FAST})
    assert [(r["cb"], r["status"]) for r in of(records, "refused")] == [("refused", 401)]
    assert (records[-1]["cb"], records[-1]["reason"], records[-1]["code"]) == ("close", "refused", 401)
