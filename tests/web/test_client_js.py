"""The browser client (progress-client.js) run under Node against a scripted server speaking the documented protocol
(tests/support/js_client.py), and against the real router."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_progress_ws import ProgressSettings
from celery_progress_ws._core.append import APPEND_SCRIPT, OperationAppender, PublishCommand, script_arguments
from celery_progress_ws._core.codec import encode_entry, make_entry
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws._core.schemas import TERMINAL_STATUSES
from tests.support.js_client import (
    CLIENT_DTS,
    CLIENT_JS,
    FAST,
    NODE,
    ScriptedServer,
    docs_example,
    of,
    run_docs_example,
    start_node,
)

HARNESS = """
const [clientUrl, configJson] = process.argv.slice(2);
const { subscribe } = await import(clientUrl);
const config = JSON.parse(configJson);
const log = (record) => process.stdout.write(JSON.stringify(record) + "\\n");
let progressSeen = 0;
const subscription = subscribe(config.operationId, {
  ...config.options,
  onMessage: (m) => log({ cb: "message", type: m.type, id: m.id ?? null }),
  onProgress: (d, m) => {
    log({ cb: "progress", pct: d.progress_percentage, id: m.id });
    progressSeen += 1;
    if (config.closeAfterProgress === progressSeen) subscription.close();
  },
  onStatus: (d, m) => log({ cb: "status", status: d.status, id: m.id }),
  onEvent: (m) => log({ cb: "event", type: m.type, id: m.id }),
  onState: (d) => log({ cb: "state", data: d }),
  onGap: (d) => log({ cb: "gap", reason: d.reason, after_id: d.after_id }),
  onOpen: (i) => log({ cb: "open", transport: i.transport, lastEventId: i.lastEventId }),
  onError: (p) => log({ cb: "error", transport: p.transport, message: p.message, retryInMs: p.retryInMs }),
  onClose: (i) => {
    log({ cb: "close", reason: i.reason, status: i.status, code: i.code, message: i.message, last: i.lastEventId });
    setImmediate(() => process.exit(0));
  },
});
"""


def progress(entry_id: str, pct: float, document: str | None = None) -> dict[str, Any]:
    """A delivered chunking_progress message."""
    data: dict[str, Any] = {"progress_percentage": pct, "documents_processed": pct / 10, "total_documents": 10}
    if document is not None:
        data["current_document"] = document
    return {"id": entry_id, "timestamp": "2026-01-01T00:00:00+00:00", "type": "chunking_progress", "data": data}


def status(entry_id: str, value: str) -> dict[str, Any]:
    """A delivered status_update message."""
    return {
        "id": entry_id,
        "timestamp": "2026-01-01T00:00:00+00:00",
        "type": "status_update",
        "data": {"status": value},
    }


def event(entry_id: str, kind: str) -> dict[str, Any]:
    """A delivered free-form event."""
    return {"id": entry_id, "timestamp": "2026-01-01T00:00:00+00:00", "type": kind, "data": {"n": 1}}


async def start_node_client(node_command: list[str], tmp_path: Path, config: dict[str, Any]) -> Any:
    """Start the harness under Node with the client module and ``config``; its stdout and stderr are pipes."""
    harness = tmp_path / "harness.mjs"
    harness.write_text(HARNESS)
    return await start_node(node_command, harness, config)


async def run_client(
    node_command: list[str], tmp_path: Path, scripted: ScriptedServer, operation_id: str, **config: Any
) -> list[dict[str, Any]]:
    """Run the client under Node until onClose; return the callback records it printed."""
    options = {"baseUrl": scripted.base_url, **FAST, **config.pop("options", {})}
    process = await start_node_client(
        node_command, tmp_path, {"operationId": operation_id, "options": options, **config}
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    records = [json.loads(line) for line in stdout.decode().splitlines()]
    assert records, stderr.decode()
    assert records[-1]["cb"] == "close", records
    return records


def test_static_files_exist_and_the_module_parses() -> None:
    """The JS module and its declarations ship in web/static, and the module is valid JavaScript."""
    assert CLIENT_JS.is_file()
    assert CLIENT_DTS.is_file()
    if NODE is None:
        pytest.skip("SKIPPED LOUDLY: `node` is not on PATH, so the module cannot be syntax-checked")
    subprocess.run([NODE, "--check", str(CLIENT_JS)], check=True)


def test_every_export_is_declared() -> None:
    """Each name the module exports has a declaration in progress-client.d.ts, the three entry points among them."""
    exported = set(
        re.findall(r"^export (?:async )?(?:function|const|class) (\w+)", CLIENT_JS.read_text(), re.MULTILINE)
    )
    declared = set(re.findall(r"^export declare (?:function|const|class) (\w+)", CLIENT_DTS.read_text(), re.MULTILINE))
    assert {"subscribe", "subscribeMine", "listMine", "ProgressRequestError"} <= exported
    assert exported == declared


@pytest.mark.integration
def test_module_constants_match_python(node_command: list[str]) -> None:
    """The module's terminal statuses equal the Python ones, and compareEventIds orders ids numerically."""
    script = (
        f"const m = await import({json.dumps(CLIENT_JS.as_uri())});"
        "console.log(JSON.stringify({terminal: m.TERMINAL_STATUSES, cmp: ["
        "m.compareEventIds('9-0', '10-0'), m.compareEventIds('10-2', '10-10'), m.compareEventIds('5-1', '5-1'),"
        "m.compareEventIds('99999999999999999999-1', '99999999999999999998-7')]}));"
    )
    result = subprocess.run(
        [*node_command, "--input-type=module", "-e", script], capture_output=True, text=True, check=True
    )
    output = json.loads(result.stdout)
    assert set(output["terminal"]) == {str(value) for value in TERMINAL_STATUSES}
    assert output["cmp"] == [-1, -1, 0, 1]


@pytest.mark.integration
async def test_websocket_delivers_in_order_ignores_duplicates_and_finishes(
    node_command: list[str], tmp_path: Path, scripted: ScriptedServer
) -> None:
    """Over WebSocket every message reaches its callback once, a replayed id is dropped, and 1000 ends it."""
    scripted.scripts["op"] = [
        [
            ("send", progress("1-0", 10)),
            ("send", progress("2-0", 20)),
            ("send", progress("2-0", 20)),
            ("send", progress("1-5", 15)),
            ("send", event("3-0", "chunking_document_complete")),
            ("send", status("4-0", "completed")),
            ("close", 1000, "Operation completed"),
        ]
    ]
    records = await run_client(node_command, tmp_path, scripted, "op", options={"transport": "websocket"})
    assert [r["id"] for r in of(records, "message")] == ["1-0", "2-0", "3-0", "4-0"]
    assert [r["pct"] for r in of(records, "progress")] == [10, 20]
    assert of(records, "event") == [{"cb": "event", "type": "chunking_document_complete", "id": "3-0"}]
    assert of(records, "open") == [{"cb": "open", "transport": "websocket", "lastEventId": None}]
    close = records[-1]
    assert (close["reason"], close["status"], close["last"]) == ("finished", "completed", "4-0")
    assert scripted.connections == [("websocket", None)]


@pytest.mark.integration
async def test_websocket_reconnects_and_resumes_after_the_last_id(
    node_command: list[str], tmp_path: Path, scripted: ScriptedServer
) -> None:
    """After a 1013 "Client too slow" close the client reconnects with last_event_id and delivers each entry once."""
    scripted.scripts["op"] = [
        [("send", progress("1-0", 10)), ("send", progress("2-0", 20)), ("close", 1013, "Client too slow")],
        [
            ("send", progress("2-0", 20)),
            ("send", progress("3-0", 30)),
            ("send", status("4-0", "failed")),
            ("close", 1000, "Operation completed"),
        ],
    ]
    records = await run_client(
        node_command, tmp_path, scripted, "op", options={"transport": "websocket", "lastEventId": "0-1"}
    )
    assert [r["id"] for r in of(records, "message")] == ["1-0", "2-0", "3-0", "4-0"]
    assert scripted.connections == [("websocket", "0-1"), ("websocket", "2-0")]
    errors = of(records, "error")
    assert len(errors) == 1
    assert "1013" in errors[0]["message"]
    assert errors[0]["retryInMs"] > 0
    assert (records[-1]["reason"], records[-1]["status"]) == ("finished", "failed")


@pytest.mark.integration
async def test_policy_close_is_final(node_command: list[str], tmp_path: Path, scripted: ScriptedServer) -> None:
    """A 1008 close ends the subscription as refused, with the server's reason, and is never retried."""
    scripted.scripts["op"] = [[("refuse", "User connection limit exceeded")]]
    records = await run_client(node_command, tmp_path, scripted, "op")
    close = records[-1]
    assert (close["reason"], close["code"], close["message"]) == ("refused", 1008, "User connection limit exceeded")
    assert scripted.connections == [("websocket", None)]


@pytest.mark.integration
async def test_falls_back_to_sse_and_reads_every_message_type(
    node_command: list[str], tmp_path: Path, scripted: ScriptedServer
) -> None:
    """When the WebSocket handshake fails the client reads SSE (every message type) and keeps to SSE on reconnect."""
    state = {"type": "current_state", "timestamp": "2026-01-01T00:00:00+00:00", "data": {"name": "ingest"}}
    gap = {
        "type": "history_gap",
        "timestamp": "2026-01-01T00:00:00+00:00",
        "data": {"reason": "trimmed", "after_id": None, "resumes_at": "5-0"},
    }
    scripted.scripts["op"] = [
        [("reject",)],
        [
            ("raw", ": heartbeat\n\n"),
            ("send", state),
            ("send", gap),
            ("send", progress("5-0", 50)),
        ],
        [("send", event("6-0", "my_custom_event")), ("send", status("7-0", "cancelled"))],
    ]
    records = await run_client(node_command, tmp_path, scripted, "op")
    assert [r["type"] for r in of(records, "message")] == [
        "current_state",
        "history_gap",
        "chunking_progress",
        "my_custom_event",
        "status_update",
    ]
    assert of(records, "state") == [{"cb": "state", "data": {"name": "ingest"}}]
    assert of(records, "gap") == [{"cb": "gap", "reason": "trimmed", "after_id": None}]
    assert [r["transport"] for r in of(records, "open")] == ["sse", "sse"]
    assert (records[-1]["reason"], records[-1]["status"]) == ("finished", "cancelled")
    assert scripted.connections == [("websocket", None), ("sse", None), ("sse", "5-0")]


@pytest.mark.integration
async def test_an_ahead_of_stream_gap_makes_the_client_forget_its_last_id(
    node_command: list[str], tmp_path: Path, scripted: ScriptedServer
) -> None:
    """After an `ahead_of_stream` gap the client takes the stream from its start, though its ids are lower."""
    gap = {
        "type": "history_gap",
        "timestamp": "2026-01-01T00:00:00+00:00",
        "data": {"reason": "ahead_of_stream", "after_id": "99-0", "resumes_at": "1-0"},
    }
    scripted.scripts["op"] = [
        [
            ("send", gap),
            ("send", progress("1-0", 50)),
            ("send", status("2-0", "completed")),
            ("close", 1000, "Operation completed"),
        ]
    ]
    options = {"transport": "websocket", "lastEventId": "99-0"}
    records = await run_client(node_command, tmp_path, scripted, "op", options=options)
    assert [r["id"] for r in of(records, "message") if r["id"]] == ["1-0", "2-0"]
    assert (records[-1]["reason"], records[-1]["status"], records[-1]["last"]) == ("finished", "completed", "2-0")


@pytest.mark.integration
async def test_sse_resumes_with_last_event_id_and_parses_crlf(
    node_command: list[str], tmp_path: Path, scripted: ScriptedServer
) -> None:
    """An SSE stream that ends early is reopened with last_event_id; CRLF lines and split chunks parse."""
    split = f"data: {json.dumps(progress('2-0', 20))}"
    scripted.scripts["op"] = [
        [("send", progress("1-0", 10), "\r\n")],
        [("raw", split[:17]), ("raw", split[17:] + "\r"), ("raw", "\n\r\n"), ("send", status("3-0", "completed"))],
    ]
    records = await run_client(node_command, tmp_path, scripted, "op", options={"transport": "sse"})
    assert [r["id"] for r in of(records, "message")] == ["1-0", "2-0", "3-0"]
    assert scripted.connections == [("sse", None), ("sse", "1-0")]
    assert records[-1]["reason"] == "finished"


@pytest.mark.integration
async def test_sse_http_refusal_is_final(node_command: list[str], tmp_path: Path, scripted: ScriptedServer) -> None:
    """An HTTP 403 on SSE ends the subscription as refused with the response's detail."""
    scripted.scripts["op"] = [[("http", 403, "Not authorized")]]
    records = await run_client(node_command, tmp_path, scripted, "op", options={"transport": "sse"})
    close = records[-1]
    assert (close["reason"], close["code"], close["message"]) == ("refused", 403, "Not authorized")
    assert scripted.connections == [("sse", None)]


@pytest.mark.integration
async def test_close_stops_for_good(node_command: list[str], tmp_path: Path, scripted: ScriptedServer) -> None:
    """close() ends the subscription with reason "closed" and nothing reconnects."""
    scripted.scripts["op"] = [[("send", progress("1-0", 10)), ("hold",)]]
    records = await run_client(node_command, tmp_path, scripted, "op", closeAfterProgress=1)
    assert records[-1]["reason"] == "closed"
    assert records[-1]["last"] == "1-0"
    assert scripted.connections == [("websocket", None)]


@pytest.mark.integration
async def test_gives_up_after_max_retries(node_command: list[str], tmp_path: Path, scripted: ScriptedServer) -> None:
    """With maxRetries set, consecutive failures end the subscription as gave_up instead of retrying forever."""
    scripted.scripts["op"] = [[("http", 503, "down")], [("http", 503, "down")], [("http", 503, "down")]]
    records = await run_client(node_command, tmp_path, scripted, "op", options={"transport": "sse", "maxRetries": 2})
    assert records[-1]["reason"] == "gave_up"
    assert len(scripted.connections) == 3


@pytest.mark.integration
async def test_docs_example_runs(node_command: list[str], tmp_path: Path, scripted: ScriptedServer) -> None:
    """The browser example in docs/clients.md runs as written (with a stub DOM) and shows the final state."""
    scripted.scripts["op-7"] = [
        [
            ("send", progress("1-0", 50, document="a.pdf")),
            ("send", event("2-0", "chunking_document_complete")),
            ("send", progress("3-0", 100)),
            ("send", status("4-0", "completed")),
            ("close", 1000, "Operation completed"),
        ]
    ]
    origin = scripted.base_url.removesuffix("/progress")
    page_url = f"{origin}/page?operation=op-7"
    elements = await run_docs_example(node_command, tmp_path, docs_example(mine=False), page_url)
    assert elements["#bar"]["value"] == 100
    assert elements["#label"]["textContent"] == "completed"
    assert elements["#log"]["lines"] == ["chunking_document_complete\n"]
    assert scripted.connections == [("websocket", None)]


@pytest.mark.integration
async def test_sse_no_content_means_finished(node_command: list[str], tmp_path: Path, scripted: ScriptedServer) -> None:
    """An HTTP 204 on an SSE resume (the last id is already past the end) finishes without reconnecting."""
    scripted.scripts["op"] = [[("finished",)]]
    options = {"transport": "sse", "lastEventId": "9-0"}
    records = await run_client(node_command, tmp_path, scripted, "op", options=options)
    assert (records[-1]["reason"], records[-1]["code"]) == ("finished", 204)
    assert scripted.connections == [("sse", "9-0")]


# --- against the real router, on the test's Redis -----------------------------------------------------------------

USER = {"user": "alice"}  # tests/support/serverapp.py reads the user from this query parameter


def appender(client: redis.Redis, settings: ProgressSettings) -> Callable[..., str]:
    """Append entries with the shared Lua script, as the worker half does; returns each entry's id."""
    script = client.register_script(APPEND_SCRIPT)
    keys = KeySpace(settings.key_prefix)

    def append(operation_id: str, entry_type: str, **data: Any) -> str:
        message = encode_entry(make_entry(entry_type, data), settings.max_entry_bytes)
        call = OperationAppender(keys, operation_id, maxlen=settings.stream_maxlen)(message, ttl=60)
        return str(script(keys=call.keys, args=script_arguments(call, PublishCommand.PUBLISH)))

    return append


@contextlib.asynccontextmanager
async def node_client(node_command: list[str], tmp_path: Path, operation_id: str, **options: Any) -> AsyncIterator[Any]:
    """The client running under Node; its records are read line by line, and it is reaped (or killed) afterwards."""
    process = await start_node_client(
        node_command, tmp_path, {"operationId": operation_id, "options": {**FAST, **options}}
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.communicate(), 10)
        if process.returncode is None:
            process.kill()
            await process.communicate()


async def read_until(process: Any, callback: str, count: int = 1) -> list[dict[str, Any]]:
    """Read the client's records until ``count`` records of ``callback`` were printed."""
    records: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while sum(record["cb"] == callback for record in records) < count:
            line = await process.stdout.readline()
            assert line, (records, await process.stderr.read())
            records.append(json.loads(line))
    return records


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_real_router_history_then_live(
    node_command: list[str],
    tmp_path: Path,
    serve: Any,
    web_settings: ProgressSettings,
    redis_client: redis.Redis,
    transport: str,
) -> None:
    """Against the real router and Redis, the client gets history then live entries once each and finishes."""
    append = appender(redis_client, web_settings)
    server = serve(web_settings)
    written = [append("op-e2e", "status_update", status="started")]
    written.append(append("op-e2e", "chunking_progress", progress_percentage=25.0, documents_processed=1))
    base = f"{server.http}/progress"
    async with node_client(node_command, tmp_path, "op-e2e", baseUrl=base, transport=transport, params=USER) as node:
        records = await read_until(node, "progress")
        written.append(append("op-e2e", "chunking_progress", progress_percentage=100.0, documents_processed=4))
        written.append(append("op-e2e", "status_update", status="completed"))
        records += await read_until(node, "close")
    assert node.returncode == 0
    assert [r["id"] for r in records if r["cb"] == "message" and r["id"]] == written
    assert (records[-1]["reason"], records[-1]["status"]) == ("finished", "completed")
    assert [r["transport"] for r in records if r["cb"] == "open"] == [transport]


@pytest.mark.integration
async def test_real_router_refusal_is_final(
    node_command: list[str], tmp_path: Path, serve: Any, web_settings: ProgressSettings
) -> None:
    """The real router's authorization refusal (1008 "Not authorized") ends the client as refused."""
    server = serve(web_settings)
    base = f"{server.http}/progress"
    async with node_client(node_command, tmp_path, "forbidden-op", baseUrl=base, params=USER) as node:
        records = await read_until(node, "close")
    assert (records[-1]["reason"], records[-1]["code"], records[-1]["message"]) == ("refused", 1008, "Not authorized")
    assert not [r for r in records if r["cb"] == "error"]
