"""The load generator: a separate process that writes progress entries at a fixed rate, as a Celery worker would.

Each entry's ``data`` carries ``seq`` (0, 1, 2, ... per operation) and ``sent_ns`` (``time.time_ns()`` taken just
before the write), so clients measure latency and detect drops and duplicates.

Modes:
- ``report_progress``: ``celery_progress_ws.report_progress(..., force=True)``, configured from the
  ``CELERY_PROGRESS_WS_*`` environment, i.e. exactly what a task calls;
- ``script``: the shared one-round-trip write (``APPEND_SCRIPT``) called directly, for before ``report_progress``
  exists;
- ``auto``: ``report_progress`` when it is importable, else ``script``.

Protocol (JSON lines): ``{"cmd": "run", "ops": [...], "rate_per_op": r, "duration": s}`` answers ``started`` then
``done``; ``{"cmd": "quit"}`` exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable

from benchmarks._probes import cpu_seconds
from benchmarks._protocol import emit, install_watchdog

Publish = Callable[[str, int, int], str]
"""publish(operation_id, seq, total) -> outcome (``sent``, or what ``report_progress`` returned)"""


def script_publisher() -> Publish:
    import redis

    from celery_progress_ws import ProgressSettings
    from celery_progress_ws._core.append import APPEND_SCRIPT, OperationAppender, PublishCommand, script_arguments
    from celery_progress_ws._core.codec import encode_entry, make_entry
    from celery_progress_ws._core.keys import KeySpace

    settings = ProgressSettings()
    keys = KeySpace(settings.key_prefix)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    append = client.register_script(APPEND_SCRIPT)

    def publish(op: str, seq: int, total: int) -> str:
        data = {"documents_processed": seq + 1, "total_documents": total, "seq": seq, "sent_ns": time.time_ns()}
        message = encode_entry(make_entry("chunking_progress", data), settings.max_entry_bytes)
        call = OperationAppender(keys, op, maxlen=settings.stream_maxlen)(message, ttl=600)
        append(keys=call.keys, args=script_arguments(call, PublishCommand.PUBLISH))
        return "sent"

    return publish


def report_progress_publisher() -> Publish:
    from celery_progress_ws import report_progress

    def publish(op: str, seq: int, total: int) -> str:
        return str(report_progress(seq + 1, total, operation_id=op, force=True, seq=seq, sent_ns=time.time_ns()))

    return publish


def make_publisher(mode: str) -> tuple[str, Publish]:
    if mode in ("auto", "report_progress"):
        try:
            return "report_progress", report_progress_publisher()
        except ImportError:
            if mode == "report_progress":
                raise
    return "script", script_publisher()


def run(publish: Publish, ops: list[str], rate_per_op: float, duration: float) -> None:
    """Entry k goes to ``ops[k % len(ops)]`` at ``k / (rate_per_op * len(ops))`` seconds: evenly spread."""
    total_rate = rate_per_op * len(ops)
    count = max(1, round(duration * total_rate))
    per_op_total = -(-count // len(ops))
    sent = dict.fromkeys(ops, 0)
    outcomes: Counter[str] = Counter()
    behind_max = 0.0
    cpu_before = cpu_seconds()
    emit(event="started", t_ns=time.time_ns())
    start = time.perf_counter()
    for k in range(count):
        due = start + k / total_rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            behind_max = max(behind_max, -delay)
        op = ops[k % len(ops)]
        outcomes[publish(op, sent[op], per_op_total)] += 1
        sent[op] += 1
    elapsed = time.perf_counter() - start
    emit(
        event="done",
        published=sent,
        outcomes=dict(outcomes),
        seconds=elapsed,
        achieved_rate=count / elapsed if elapsed else 0.0,
        behind_max_ms=1000 * behind_max,
        cpu_seconds=cpu_seconds() - cpu_before,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["auto", "report_progress", "script"], default="auto")
    args = parser.parse_args()
    install_watchdog()
    mode, publish = make_publisher(args.mode)
    emit(event="hello", mode=mode)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "run":
            run(publish, command["ops"], float(command["rate_per_op"]), float(command["duration"]))


if __name__ == "__main__":
    main()
