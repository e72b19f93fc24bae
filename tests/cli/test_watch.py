"""The terminal client (`celery-progress-ws watch`) on a real Redis: history, live, dedupe, exit codes, restarts."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_progress_ws import ProgressSettings
from celery_progress_ws._cli import watch as watch_module
from celery_progress_ws._cli.output import JsonSink
from celery_progress_ws._cli.watch import Watcher
from celery_progress_ws._cli.watch_cli import main
from celery_progress_ws._core.append import APPEND_SCRIPT, OperationAppender, PublishCommand, script_arguments
from celery_progress_ws._core.codec import encode_entry, make_entry
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws._core.policy import ttl_for
from devtools.processes import OwnedProcess, stop_all
from devtools.servers import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
RUN_WATCH = "import sys; from celery_progress_ws._cli.watch_cli import main; sys.exit(main(sys.argv[1:]))"

Append = Callable[..., str]
Watch = Callable[..., OwnedProcess]


def appender(client: redis.Redis, settings: ProgressSettings) -> Append:
    """A function that appends one entry with the shared Lua script, as the worker half does, and returns its id."""
    script = client.register_script(APPEND_SCRIPT)
    keys = KeySpace(settings.key_prefix)

    def append(operation_id: str, entry_type: str, **data: Any) -> str:
        message = encode_entry(make_entry(entry_type, data), settings.max_entry_bytes)
        ttl = ttl_for(settings, entry_type, data)
        call = OperationAppender(keys, operation_id, maxlen=settings.stream_maxlen)(message, ttl=ttl)
        return str(script(keys=call.keys, args=script_arguments(call, PublishCommand.PUBLISH)))

    return append


@pytest.fixture
def append(redis_client: redis.Redis, settings: ProgressSettings) -> Append:
    return appender(redis_client, settings)


def progress(append: Append, operation_id: str, done: int, total: int = 4) -> str:
    return append(
        operation_id,
        "chunking_progress",
        progress_percentage=done / total * 100,
        documents_processed=done,
        total_documents=total,
        chunks_created=done * 3,
        current_document=f"doc-{done}.pdf",
    )


def status(append: Append, operation_id: str, value: str) -> str:
    return append(operation_id, "status_update", status=value)


def watch_process(settings: ProgressSettings, *args: str) -> OwnedProcess:
    """The watch command in its own process group, printing JSON lines."""
    command = [sys.executable, "-c", RUN_WATCH, *args, "--redis-url", settings.redis_url]
    command += ["--key-prefix", settings.key_prefix, "--json"]
    return OwnedProcess(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def watch() -> Iterator[Watch]:
    """Starts watch commands (``watch_process``); whichever still runs when the test ends is stopped by its pid."""
    started: list[OwnedProcess] = []

    def start(settings: ProgressSettings, *args: str) -> OwnedProcess:
        started.append(watch_process(settings, *args))
        return started[-1]

    yield start
    stop_all(started)
    for process in started:
        for pipe in (process.popen.stdout, process.popen.stderr):
            if pipe is not None:
                pipe.close()


def read_lines(process: OwnedProcess, count: int) -> list[dict[str, Any]]:
    """Block until the process printed ``count`` more JSON lines."""
    assert process.popen.stdout is not None
    return [json.loads(process.popen.stdout.readline()) for _ in range(count)]


def finish(process: OwnedProcess) -> tuple[int, list[dict[str, Any]], str]:
    """Wait for the command to exit; return its exit status, the JSON lines ``read_lines`` has not returned, and stderr.

    The rest of its output is read after it exited, through the same buffered pipe as ``read_lines`` (lines already
    in that buffer would be lost to a read of the bare pipe); a watcher prints far less than a pipe holds.
    """
    exited = process.wait_exit(60)
    code = process.stop()
    assert process.popen.stdout is not None
    assert process.popen.stderr is not None
    stdout, stderr = process.popen.stdout.read(), process.popen.stderr.read().decode()
    assert exited, f"the watch command did not exit within 60 s: {stderr}"
    return code, [json.loads(line) for line in stdout.splitlines()], stderr


@pytest.fixture
def private_settings(private_redis: PrivateRedis) -> ProgressSettings:
    return ProgressSettings(redis_url=private_redis.url, key_prefix="watch:")


@pytest.fixture
def private_client(private_redis: PrivateRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    yield client
    client.close()


@pytest.mark.integration
def test_history_then_live_each_entry_once_in_order(settings: ProgressSettings, append: Append, watch: Watch) -> None:
    """Entries written before and while the watcher runs are printed exactly once, in stream order, then exit 0."""
    ids = [status(append, "op", "queued"), status(append, "op", "started"), progress(append, "op", 1)]
    process = watch(settings, "op")
    history = read_lines(process, 3)  # printed after the live subscription is confirmed
    ids += [progress(append, "op", 2), append("op", "chunking_document_complete", document="doc-2.pdf")]
    ids += [progress(append, "op", 4), status(append, "op", "completed")]
    code, rest, stderr = finish(process)
    lines = history + rest
    assert code == 0, stderr
    assert [line["id"] for line in lines] == ids
    assert lines[3]["data"]["current_document"] == "doc-2.pdf"
    assert {line["operation_id"] for line in lines} == {"op"}
    assert (lines[-1]["type"], lines[-1]["data"]) == ("status_update", {"status": "completed"})


@pytest.mark.integration
@pytest.mark.parametrize(
    ("finals", "expected"),
    [
        (["completed"], 0),
        (["failed"], 1),
        (["cancelled"], 2),
        (["completed", "failed", "cancelled"], 1),
        (["completed", "cancelled"], 2),
        (["completed", "completed"], 0),
    ],
)
def test_exit_status_follows_the_final_statuses(
    settings: ProgressSettings, append: Append, finals: list[str], expected: int, watch: Watch
) -> None:
    """Exit 0 when every operation completed, 1 if any failed, else 2 if any was cancelled."""
    operation_ids = [f"op-{index}" for index in range(len(finals))]
    for operation_id, final in zip(operation_ids, finals, strict=True):
        status(append, operation_id, "started")
        status(append, operation_id, final)
    code, lines, stderr = finish(watch(settings, *operation_ids))
    assert code == expected, stderr
    for operation_id, final in zip(operation_ids, finals, strict=True):
        statuses = [line["data"]["status"] for line in lines if line["operation_id"] == operation_id]
        assert statuses == ["started", final]


@pytest.mark.integration
def test_timeout_exits_3_after_printing_what_there_was(
    settings: ProgressSettings, append: Append, watch: Watch
) -> None:
    """An operation that does not end within --timeout gives exit 3, after its entries so far were printed."""
    started = status(append, "slow", "started")
    status(append, "done", "completed")
    code, lines, stderr = finish(watch(settings, "slow", "done", "--timeout", "0.5"))
    assert code == 3, stderr
    assert started in [line["id"] for line in lines]


@pytest.mark.integration
def test_entry_written_during_history_read_is_printed_once(
    settings: ProgressSettings, append: Append, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry written after the subscription but before the history read is in both, and is printed once."""
    first = status(append, "op", "started")
    written: list[str] = []
    original = Watcher._catch_up

    def catch_up_after_a_write(self: Watcher, operation: Any, run_id: str | None) -> None:
        if not written:
            written.append(status(append, "op", "completed"))  # lands in the stream and on the live channel
        original(self, operation, run_id)

    monkeypatch.setattr(Watcher, "_catch_up", catch_up_after_a_write)
    out, err = io.StringIO(), io.StringIO()
    watcher = Watcher(settings, ["op"], JsonSink(out, err), timeout=30)
    assert watcher.run() == 0, err.getvalue()
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == [first, *written]


@pytest.mark.integration
def test_trimmed_history_is_announced_as_a_gap(
    settings: ProgressSettings, redis_client: redis.Redis, watch: Watch
) -> None:
    """When the stream's max length dropped early entries, a history_gap line (reason trimmed) comes first."""
    short = settings.model_copy(update={"stream_maxlen": 2})
    append = appender(redis_client, short)
    status(append, "op", "queued")
    status(append, "op", "started")
    kept = [progress(append, "op", 1), status(append, "op", "completed")]
    code, lines, stderr = finish(watch(settings, "op"))
    assert code == 0, stderr
    assert lines[0]["type"] == "history_gap"
    assert lines[0]["data"] == {"reason": "trimmed", "after_id": None, "resumes_at": kept[0]}
    assert [line["id"] for line in lines[1:]] == kept


@pytest.mark.integration
def test_resumes_after_redis_restart_and_reports_the_gap(
    private_redis: PrivateRedis, private_settings: ProgressSettings, private_client: redis.Redis, watch: Watch
) -> None:
    """After Redis restarts (losing its data) the watcher reconnects, says so with a gap, and prints what follows."""
    append = appender(private_client, private_settings)
    before = [status(append, "op", "started"), progress(append, "op", 1)]
    process = watch(private_settings, "op")
    assert [line["id"] for line in read_lines(process, 2)] == before
    private_redis.restart()
    append = appender(private_client, private_settings)
    after = [progress(append, "op", 3), status(append, "op", "completed")]
    code, lines, stderr = finish(process)
    assert code == 0, stderr
    assert "connection lost" in stderr
    assert lines[0]["type"] == "history_gap"
    assert lines[0]["data"]["reason"] == "redis_restarted"
    assert lines[0]["data"]["after_id"] == before[-1]
    assert [line["id"] for line in lines[1:]] == after


@pytest.mark.integration
def test_progress_bars_show_the_final_state(settings: ProgressSettings, append: Append) -> None:
    """Without --json the rich display ends showing each operation's percentage and final status."""
    status(append, "op", "started")
    progress(append, "op", 2)
    append("op", "chunking_document_complete", document="doc-2.pdf")
    status(append, "op", "failed")
    out, err = io.StringIO(), io.StringIO()
    code = main(["op", "--redis-url", settings.redis_url, "--key-prefix", settings.key_prefix], stdout=out, stderr=err)
    assert code == 1, err.getvalue()
    text = out.getvalue()
    assert "50.0%" in text
    assert "failed" in text
    assert "chunking_document_complete" in text


@pytest.mark.integration
def test_idle_connection_is_pinged_and_answers(
    settings: ProgressSettings, append: Append, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quiet pub/sub connection is pinged; Redis' answers keep it from being treated as dead."""
    monkeypatch.setattr(watch_module, "PING_INTERVAL_SECONDS", 0.05)
    monkeypatch.setattr(watch_module, "PING_TIMEOUT_SECONDS", 0.3)
    status(append, "op", "started")
    out, err = io.StringIO(), io.StringIO()
    assert Watcher(settings, ["op"], JsonSink(out, err), timeout=1.0).run() == 3
    assert err.getvalue() == ""
    assert len(out.getvalue().splitlines()) == 1


@pytest.mark.integration
def test_a_forged_id_ahead_of_the_stream_is_reported_and_the_stream_shown_from_its_start(
    private_settings: ProgressSettings, private_client: redis.Redis, watch: Watch
) -> None:
    """A live id the stream never issued hides what follows only until the next reconnect: then an `ahead_of_stream`
    gap, and the stream again from its start (as the web half does)."""
    append = appender(private_client, private_settings)
    first = status(append, "op", "started")
    process = watch(private_settings, "op")
    assert [line["id"] for line in read_lines(process, 1)] == [first]
    forged = "99999999999999-0"
    message = encode_entry(make_entry("note", {"forged": True}), private_settings.max_entry_bytes)
    private_client.publish(KeySpace(private_settings.key_prefix).live("op"), f"{forged} {message}")
    assert [line["id"] for line in read_lines(process, 1)] == [forged]
    hidden = progress(append, "op", 1)
    private_client.client_kill_filter(_type="pubsub")
    (gap,) = read_lines(process, 1)
    last = status(append, "op", "completed")
    code, rest, stderr = finish(process)
    assert code == 0, stderr
    assert gap["type"] == "history_gap"
    assert gap["data"] == {"reason": "ahead_of_stream", "after_id": forged, "resumes_at": first}
    assert [line["id"] for line in rest] == [first, hidden, last]
