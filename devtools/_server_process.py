"""One embedded valkey-server process on a fixed port with a directory of its own, started and stopped by pid only.

The building block of the private cluster and sentinel sets: each node keeps its port across restarts, so a node that
comes back is the same address its peers and clients already know.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from devtools.processes import OwnedProcess, StartError
from devtools.servers import free_port, redis_answers, server_binary


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; raise ``TimeoutError`` naming ``what`` after ``timeout`` seconds.

    A condition that raises a Redis error counts as not holding yet: nodes restart and refuse while they settle.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting until {what}")
        time.sleep(interval)


def distinct_free_ports(count: int, taken: set[int] | None = None) -> list[int]:
    """``count`` different ports on 127.0.0.1 that nothing listens on right now (none of them in ``taken``)."""
    chosen: list[int] = []
    avoid = set(taken or ())
    while len(chosen) < count:
        port = free_port()
        if port not in avoid:
            avoid.add(port)
            chosen.append(port)
    return chosen


class ServerStartError(RuntimeError):
    """A valkey-server exited or did not answer PING in time after being started."""


class ServerProcess:
    """A valkey-server on ``port`` whose files live in ``directory``; only this object starts, kills or stops it."""

    def __init__(self, port: int, directory: Path, arguments: Sequence[str] = ()) -> None:
        self.port = port
        self.directory = directory
        self.arguments = list(arguments)
        self._process: OwnedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and not self._process.exited()

    def start(self, extra_arguments: Sequence[str] = (), timeout: float = 15.0) -> None:
        """Start the server (again, on the same port) and wait until it answers PING."""
        if self.alive:
            raise RuntimeError(f"server on port {self.port} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [server_binary(), *self.arguments, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--daemonize", "no", *extra_arguments]
        self._process = OwnedProcess(command, log=self.directory / "server.log")
        try:
            self._process.wait_until(lambda: redis_answers(self.url, 0.2), timeout, f"valkey-server on {self.port}")
        except StartError as exc:
            self.stop()
            raise ServerStartError(f"valkey-server on port {self.port} did not start:\n{self.log_tail()}") from exc

    def kill(self) -> None:
        """SIGKILL this server (a crash: nothing is flushed or announced) and reap it."""
        if self._process is not None:
            self._process.kill()
        self._process = None

    def stop(self) -> None:
        """Stop this server by its pid (SIGTERM, then SIGKILL if it lingers) and reap it."""
        if self._process is not None:
            self._process.stop()
        self._process = None

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A plain client of this one node that decodes responses; the caller closes it."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )

    def command(self, *args: str | int | float) -> object:
        """Run one command on this node over a short-lived connection, raw reply (no redis-py reply parsing)."""
        with self.client() as client:
            return client.execute_command(*args)

    def strings(self, *args: str | int | float) -> list[str]:
        """Run one command whose raw reply is a list of strings."""
        reply = self.command(*args)
        assert isinstance(reply, list)
        return [str(item) for item in reply]

    def info(self, section: str) -> dict[str, Any]:
        """One ``INFO`` section, parsed."""
        with self.client() as client:
            return dict(client.info(section))

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.directory / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
