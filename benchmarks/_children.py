"""The child processes a benchmark drives: web servers by kind, the publisher and the client fleet.

Each is a ``python -m benchmarks.<module>`` started by ``devtools.processes`` in its own process group, talking JSON
lines over its stdin/stdout (see ``_protocol``); its stderr goes to a log file.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._protocol import WS_PATH
from devtools.processes import OwnedProcess, StartError, free_port, http_ok

ROOT = Path(__file__).resolve().parent.parent
SERVER_KINDS = ("ours", "ours-queued", "floor", "seed", "xread-per-op", "floor-pubsub", "floor-queued")
SERVER_LABELS = {
    "ours": "ours",
    "ours-queued": "ours, every message via the sender task (diagnostic)",
    "floor": "floor (one XREAD loop)",
    "seed": "seed-style (XREADGROUP+sleep)",
    "xread-per-op": "one XREAD per operation",
    "floor-pubsub": "floor over pub/sub (diagnostic)",
    "floor-queued": "floor + queue/task per socket (diagnostic)",
}


class BenchError(RuntimeError):
    """A child misbehaved or did not answer in time."""


class Child:
    """A ``python -m <module>`` child in its own process group, with JSON lines over its stdin/stdout."""

    def __init__(self, name: str, module: str, args: Sequence[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.owned = OwnedProcess(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            log=self.log_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.process = self.owned.popen
        assert self.process.stdout is not None
        self._stdout = self.process.stdout.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout, selectors.EVENT_READ)
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.owned.pid

    def send(self, **message: Any) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError as exc:
            raise BenchError(f"{self.name} exited early; see {self.log_path}\n{self.log_tail()}") from exc

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next JSON line from the child; ``BenchError`` after ``timeout`` seconds or if it exits."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name} did not answer within {timeout:.0f} s; see {self.log_path}")
            if self._selector.select(min(remaining, 0.5)):
                chunk = os.read(self._stdout, 65536)
                if not chunk:
                    raise BenchError(f"{self.name} exited; see {self.log_path}\n{self.log_tail()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        message = self.receive(timeout)
        if message.get("event") != event:
            raise BenchError(f"{self.name}: expected {event!r}, got {message}")
        return message

    def logged_errors(self) -> bool:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        return "Traceback" in text or "ERROR" in text

    def log_tail(self, lines: int = 15) -> str:
        return self.owned.log_tail(lines)

    def stop(self) -> None:
        """Stop this child's process group (by its own pid) and close our ends of its pipes."""
        self.owned.stop(5)
        self._selector.close()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Server(Child):
    """One web app (ours or a baseline) under uvicorn on its own port."""

    def __init__(self, kind: str, redis_url: str, prefix: str, log_dir: Path, settings: dict[str, Any] | None = None):
        self.kind = kind
        self.port = free_port()
        args = ["--kind", kind, "--port", str(self.port), "--redis-url", redis_url, "--prefix", prefix]
        if settings:
            args += ["--settings", json.dumps(settings)]
        super().__init__(f"server-{kind}", "benchmarks._servers", args, log_dir)
        self.url = f"ws://127.0.0.1:{self.port}{WS_PATH}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            self.owned.wait_until(lambda: http_ok(self.port, "/health"), timeout, self.name)
        except StartError as exc:
            raise BenchError(str(exc)) from exc


class Fleet(Child):
    """The client fleet process: holds WebSocket connections and reports what they received."""

    def __init__(self, log_dir: Path, name: str = "fleet", deflate: bool = False):
        super().__init__(name, "benchmarks._fleet", ["--deflate"] if deflate else [], log_dir)

    def connect(self, url: str, ops: Sequence[str], per_op: int, timeout: float = 60.0) -> dict[str, Any]:
        self.send(cmd="connect", url=url, ops=list(ops), per_op=per_op, timeout=timeout)
        ready = self.expect("ready", timeout + 10)
        if ready["failed"]:
            raise BenchError(f"{ready['failed']} of {len(ops) * per_op} connections failed: {ready['errors']}")
        return ready

    def collect(self, expected: dict[str, int], timeout: float) -> dict[str, Any]:
        """Wait until every connection has every expected entry (or ``timeout``), then return the statistics."""
        self.send(cmd="collect", expected=expected, timeout=timeout)
        return self.expect("result", timeout + 30)

    def close_all(self) -> None:
        self.send(cmd="close")
        self.expect("closed", 30)


class LoadGen(Child):
    """The publisher process: writes entries at a fixed rate with their send time inside ``data``."""

    def __init__(self, redis_url: str, prefix: str, log_dir: Path, mode: str):
        env = {"CELERY_PROGRESS_WS_REDIS_URL": redis_url, "CELERY_PROGRESS_WS_KEY_PREFIX": prefix}
        super().__init__("loadgen", "benchmarks._loadgen", ["--mode", mode], log_dir, env)
        self.mode = mode

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until it has connected; ``mode`` then tells which way it writes (``report_progress`` or ``script``)."""
        self.mode = self.expect("hello", timeout)["mode"]

    def start(self, ops: Sequence[str], rate_per_op: float, duration: float) -> dict[str, Any]:
        self.send(cmd="run", ops=list(ops), rate_per_op=rate_per_op, duration=duration)
        return self.expect("started", 10)

    def finish(self, duration: float) -> dict[str, Any]:
        done = self.expect("done", duration + 30)
        unsent = {outcome: n for outcome, n in done["outcomes"].items() if outcome != "sent"}
        if unsent:
            print(f"  WARNING: the publisher did not send every entry at once: {unsent}", flush=True)
        return done


def ours_available() -> bool:
    """Whether the web half (``celery_progress_ws.web``) exists yet."""
    try:
        from celery_progress_ws.web import ProgressManager, create_progress_router  # noqa: F401
    except ImportError:
        return False
    return True


def pick_servers(requested: Sequence[str]) -> list[str]:
    kinds = list(requested)
    if "ours" in kinds and not ours_available():
        print("NOTE: celery_progress_ws.web is not importable yet; running the baselines only.\n", flush=True)
        kinds.remove("ours")
    return kinds
