"""What a benchmark measures beside its clients' numbers: CPU and memory of processes, the machine's other load,
and the web process's connections to Redis as both psutil and Redis see them; plus cleaning up our keys."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlsplit

import psutil
import redis


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU seconds used so far by ``pid`` (this process by default)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


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


class OtherLoad:
    """How busy the machine was with anything but this benchmark's processes and Redis while it ran."""

    def __init__(self, redis_url: str) -> None:
        self.redis_pid = _listener_pid(redis_port(redis_url))
        self.wall = time.monotonic()
        self.busy = _machine_busy_seconds()
        self.own = cpu_seconds() + (cpu_seconds(self.redis_pid) if self.redis_pid else 0.0)

    def report(self, pids: Sequence[int]) -> str:
        """The share of a core used by ``pids`` (the benchmark's children), us and Redis, and by everything else."""
        wall = time.monotonic() - self.wall
        busy = _machine_busy_seconds() - self.busy
        own = cpu_seconds() + (cpu_seconds(self.redis_pid) if self.redis_pid else 0.0) - self.own
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                own += cpu_seconds(pid)
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
