"""What every benchmark shares: child processes it owns, their JSON-line protocol, Redis and psutil probes, tables.

Each child (web server, load generator, client fleet) runs in its own process group, is stopped by its pid in a
``finally`` and also stops by itself if the benchmark dies (see ``install_watchdog``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import selectors
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psutil
import redis

from devtools.servers import free_port, resolve_redis

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
WS_PATH = "/progress/operations/{op}/ws"
CHILD_MAX_SECONDS = 1200.0
"""Every child exits by itself after this long, whatever happens to the benchmark that started it."""


class BenchError(RuntimeError):
    """A child misbehaved or did not answer in time."""


# ---------------------------------------------------------------------------------------------------------------
# Children side


def install_watchdog(max_seconds: float = CHILD_MAX_SECONDS) -> None:
    """Exit this process when its parent goes away or after ``max_seconds``, whichever comes first."""
    parent = os.getppid()
    deadline = time.monotonic() + max_seconds

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent or time.monotonic() > deadline:
                os._exit(3)

    threading.Thread(target=watch, name="watchdog", daemon=True).start()


def emit(**message: Any) -> None:
    """Write one JSON line to the parent."""
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU seconds used so far by ``pid`` (this process by default)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# ---------------------------------------------------------------------------------------------------------------
# Parent side: processes


class Child:
    """A ``python -m <module>`` child in its own process group; optional JSON lines over stdin/stdout."""

    def __init__(self, name: str, module: str, args: Sequence[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        command = [sys.executable, "-m", module, *args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        assert self.process.stdout is not None
        self._stdout = self.process.stdout.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout, selectors.EVENT_READ)
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

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
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate this child's process group (by its own pid), then kill it if it lingers."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        else:
            with contextlib.suppress(ProcessLookupError):  # grandchildren, if any
                os.killpg(self.process.pid, signal.SIGKILL)
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited; see {self.log_path}\n{self.log_tail()}")
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not start within {timeout:.0f} s; see {self.log_path}")


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


@contextlib.contextmanager
def owned_children() -> Iterator[list[Child]]:
    """A list to append children to; every one is stopped on exit, also on errors and Ctrl-C / SIGTERM."""
    children: list[Child] = []

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield children
    finally:
        for child in reversed(children):
            child.stop()
        signal.signal(signal.SIGTERM, previous)


ChildT = TypeVar("ChildT", bound=Child)


@dataclass
class Run:
    """What one benchmark run owns: Redis URL and key prefix, log folder, children."""

    redis_url: str
    prefix: str
    log_dir: Path
    children: list[Child] = field(default_factory=list)
    load_report: str = ""
    """Filled in when the run ends: how busy the machine was with anything else meanwhile."""

    def add(self, child: ChildT) -> ChildT:
        self.children.append(child)
        return child

    def op(self, *parts: object) -> str:
        """A fresh operation id for one cell (ids never repeat within a run, so cells never see each other)."""
        return "-".join(str(part) for part in parts) + "-" + uuid.uuid4().hex[:8]

    def start(self, kinds: Sequence[str], publisher: str, *, deflate: bool = False) -> Stack:
        """Start one web server per kind, the publisher process and the client fleet; return once all are ready."""
        servers = {kind: self.add(Server(kind, self.redis_url, self.prefix, self.log_dir)) for kind in kinds}
        loadgen = self.add(LoadGen(self.redis_url, self.prefix, self.log_dir, publisher))
        fleet = self.add(Fleet(self.log_dir, deflate=deflate))
        for server in servers.values():
            server.wait_ready()
        loadgen.wait_ready()
        return Stack(servers, loadgen, fleet)


@dataclass
class Stack:
    """The processes a benchmark drives: web servers by kind, the publisher and the client fleet."""

    servers: dict[str, Server]
    loadgen: LoadGen
    fleet: Fleet


@contextlib.contextmanager
def bench_run(redis_url: str | None) -> Iterator[Run]:
    """Resolve Redis, make a key prefix and a log folder; on exit stop every child and delete our keys."""
    if redis_url:
        url, private = redis_url, None
    else:
        url, private = resolve_redis()
    prefix = f"bench:{uuid.uuid4().hex[:12]}:"
    log_dir = Path(tempfile.mkdtemp(prefix="cpws-bench-"))
    try:
        with owned_children() as children:
            run = Run(url, prefix, log_dir, children)
            others = OtherLoad(url)
            yield run
            run.load_report = others.report(children)
            for child in children:
                if child.logged_errors():
                    run.load_report += f"\nNOTE: {child.name} logged errors; see {child.log_path}"
    finally:
        try:
            deleted = delete_prefix(url, prefix)
            print(f"\n(deleted {deleted} bench keys under {prefix!r}; child logs in {log_dir})", flush=True)
        finally:
            if private is not None:
                private.stop()


# ---------------------------------------------------------------------------------------------------------------
# Redis and process probes


def delete_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key under our own ``prefix`` (never anything else)."""
    if not prefix.startswith("bench:") or len(prefix) <= len("bench:"):
        raise ValueError(f"refusing to delete keys under {prefix!r}")
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    finally:
        client.close()
    return deleted


def redis_port(redis_url: str) -> int:
    return urlsplit(redis_url).port or 6379


def redis_connections(pid: int, redis_url: str) -> list[int]:
    """Local ports of the established TCP connections from ``pid`` to the Redis server."""
    port = redis_port(redis_url)
    return [
        conn.laddr.port
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    ]


def connection_commands(redis_url: str, local_ports: Sequence[int]) -> str:
    """The last command of each of those connections as Redis sees them (``CLIENT LIST``), e.g. ``subscribe:1``."""
    wanted = set(local_ports)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        clients = client.client_list()
    finally:
        client.close()
    commands: Counter[str] = Counter()
    for entry in clients:
        port = int(str(entry.get("addr", ":0")).rsplit(":", 1)[1])
        if port in wanted:
            commands[str(entry.get("cmd", "?"))] += 1
    return " ".join(f"{name}:{count}" for name, count in commands.most_common())


class OtherLoad:
    """How busy the machine was with anything but this benchmark's processes and Redis while it ran."""

    def __init__(self, redis_url: str) -> None:
        self.redis_pid = _listener_pid(redis_port(redis_url))
        self.wall = time.monotonic()
        self.busy = _machine_busy_seconds()
        self.own = cpu_seconds() + (cpu_seconds(self.redis_pid) if self.redis_pid else 0.0)

    def report(self, children: Sequence[Child]) -> str:
        wall = time.monotonic() - self.wall
        busy = _machine_busy_seconds() - self.busy
        own = cpu_seconds() + (cpu_seconds(self.redis_pid) if self.redis_pid else 0.0) - self.own
        for child in children:
            with contextlib.suppress(psutil.Error):
                own += cpu_seconds(child.pid)
        cores = psutil.cpu_count() or 1
        return (
            f"CPU of the benchmark's processes and Redis: {100 * own / wall:.0f} % of a core; everything else "
            f"(other users, kernel networking): {100 * max(0.0, busy - own) / wall:.0f} % of a core "
            f"(machine: {cores} cores, {wall:.0f} s)"
        )


def _machine_busy_seconds() -> float:
    times = psutil.cpu_times()._asdict()
    idle = ("idle", "iowait", "guest", "guest_nice")  # guest time is already counted in user time
    return float(sum(value for name, value in times.items() if name not in idle))


def _listener_pid(port: int) -> int | None:
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    return None


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


class CpuMeter:
    """Percent of one core used by some processes between ``start()`` and ``stop()``."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self._cpu: list[float] = []
        self._wall = 0.0
        self.wall = 0.0
        self.seconds: list[float] = []

    def start(self) -> CpuMeter:
        self._cpu = [cpu_seconds(pid) for pid in self.pids]
        self._wall = time.monotonic()
        return self

    def stop(self) -> list[float]:
        """Percent of one core per pid; the CPU seconds themselves are left in ``self.seconds``."""
        self.wall = time.monotonic() - self._wall
        self.seconds = [cpu_seconds(pid) - before for pid, before in zip(self.pids, self._cpu, strict=True)]
        return [100.0 * used / self.wall for used in self.seconds]


# ---------------------------------------------------------------------------------------------------------------
# Numbers and tables


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(ours: float, base: float) -> str:
    if not base or base != base or ours != ours:
        return "n/a"
    return f"{ours / base:.2f}x"


def fmt_ms(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.1f} s"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table with aligned columns."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def reproduce_command(module: str) -> str:
    return " ".join([".venv/bin/python", "-m", module, *(shlex.quote(arg) for arg in sys.argv[1:])])


def load_line() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_line() -> str:
    return f"{psutil.cpu_count()} CPUs, {load_line()} at start, Python {sys.version.split()[0]}"


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
