"""`celery-progress-ws ls --user`: a user's operations from a real Redis, as a table or JSON lines."""

from __future__ import annotations

import json

import pytest

from celery_progress_ws import ProgressPublisher, ProgressSettings
from celery_progress_ws._cli.main import main

pytestmark = pytest.mark.integration


def record(settings: ProgressSettings, user: str, operation: str, status: str, **extra: str) -> None:
    """Record ``operation`` for ``user`` with ``status`` as the worker half does."""
    with ProgressPublisher(settings) as publisher:
        publisher.publish(operation, "status_update", {"status": "queued", "task_name": "ingest"}, owner=user)
        if status != "queued":
            publisher.publish(operation, "status_update", {"status": status, **extra}, owner=user)


def test_ls_prints_exactly_the_user_s_operations_newest_first(
    settings: ProgressSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON lines newest first, filtered by --status; the table shows the error; another user's are never listed."""
    record(settings, "alice", "op-a1", "completed")
    record(settings, "alice", "op-a2", "failed", error_type="ValueError", error_message="bad row")
    record(settings, "bob", "op-b1", "queued")
    common = ["--redis-url", settings.redis_url, "--key-prefix", settings.key_prefix]
    assert main(["ls", "--user", "alice", "--json", *common]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["operation_id"], line["status"]) for line in lines] == [("op-a2", "failed"), ("op-a1", "completed")]
    assert main(["ls", "--user", "alice", "--status", "completed", "--json", *common]) == 0
    assert [json.loads(line)["operation_id"] for line in capsys.readouterr().out.splitlines()] == ["op-a1"]
    assert main(["ls", "--user", "alice", "--limit", "1", *common]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["QUEUED", "STATUS", "PROGRESS", "TASK", "OPERATION", "MESSAGE"]
    assert "op-a2" in table[1]
    assert table[1].endswith("ValueError: bad row")
    assert table[2].startswith("more: --cursor ")
    assert main(["ls", "--user", "alice", "--json", "--cursor", table[2].split()[-1], *common]) == 0
    assert [json.loads(line)["operation_id"] for line in capsys.readouterr().out.splitlines()] == ["op-a1"]


def test_ls_refuses_bad_options_with_64(settings: ProgressSettings, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown status or a foreign cursor exits 64 with a message."""
    common = ["--redis-url", settings.redis_url, "--key-prefix", settings.key_prefix]
    assert main(["ls", "--user", "alice", "--status", "running", *common]) == 64
    assert "unknown status" in capsys.readouterr().err
    assert main(["ls", "--user", "alice", "--cursor", "xyz", *common]) == 64
    assert "not a cursor" in capsys.readouterr().err


def test_ls_exits_69_when_redis_cannot_be_reached(capsys: pytest.CaptureFixture[str]) -> None:
    """A Redis nobody listens on exits 69 (unavailable)."""
    from devtools.processes import free_port

    assert main(["ls", "--user", "alice", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"]) == 69
    assert "Redis cannot be read" in capsys.readouterr().err
