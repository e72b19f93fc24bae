"""Child processes that tests, the demo and the benchmarks own: each in its own process group, stopped by its own pid.

A child is signalled (as a group) only while it has not been reaped, so its pid, which is also its group id, cannot
belong to anyone else yet; waiting for it to exit leaves it unreaped until the group has been cleaned up.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

POLL_SECONDS = 0.05
"""How often a wait checks its condition and whether the children it watches are still running."""


class StartError(RuntimeError):
    """A child exited, or did not become ready in time, while its starter waited for it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), 0.2):
            return True
    except OSError:
        return False


def http_ok(port: int, path: str, host: str = "127.0.0.1") -> bool:
    """Whether ``GET path`` on ``host:port`` answers 200."""
    connection = http.client.HTTPConnection(host, port, timeout=1)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class OwnedProcess:
    """``command`` started in a process group of its own; ``log`` receives its output unless a stream says otherwise.

    ``stdout`` / ``stderr`` take what ``subprocess.Popen`` takes (``subprocess.PIPE``...); without them and without
    ``log`` the child writes to ours.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> None:
        self.command = list(command)
        self.log = log
        self._terminated = False
        with contextlib.ExitStack() as files:
            sink: IO[bytes] | None = files.enter_context(open(log, "ab")) if log is not None else None
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                self.command,
                cwd=cwd,
                env=None if env is None else dict(env),
                stdin=stdin,
                stdout=stdout if stdout is not None else sink,
                stderr=stderr if stderr is not None else sink,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> bool:
        """Whether the child has exited; it is not reaped, so its group can still be signalled safely."""
        if self.popen.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped through the Popen object by its user
            return True

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the child to exit (without reaping it); whether it did."""
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    def wait_until(self, ready: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
        """Wait until ``ready()`` holds; ``StartError`` if the child exits first or ``timeout`` passes."""
        wait_until(ready, timeout=timeout, watching=[self], what=what or self.command[0])

    def wait_for_port(self, port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
        """Wait until the child (or anything) accepts TCP connections on ``host:port``."""
        self.wait_until(lambda: port_answers(port, host), timeout, f"{self.command[0]} on port {port}")

    def terminate(self) -> None:
        """Ask the child's whole process group to stop (SIGTERM, once: uvicorn takes a second one as "exit now")."""
        if not self._terminated:
            self._terminated = True
            self._signal_group(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM to the group, up to ``timeout`` s for the child to exit, then SIGKILL to whatever is left of the
        group (the child, if it lingers, and any grandchild); returns the child's exit status."""
        if self.popen.returncode is None:
            self.terminate()
            self.wait_exit(timeout)
            self._signal_group(signal.SIGKILL)
        return self.popen.wait()

    def kill(self) -> int:
        """SIGKILL the whole group at once (a crash: nothing is flushed or announced); returns the exit status."""
        self._signal_group(signal.SIGKILL)
        return self.popen.wait()

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the log file, if there is one."""
        if self.log is None:
            return ""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _signal_group(self, signum: signal.Signals) -> None:
        if self.popen.returncode is None:  # not reaped: the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)

    def __enter__(self) -> OwnedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(
    ready: Callable[[], bool], *, timeout: float, watching: Sequence[OwnedProcess] = (), what: str = "a child"
) -> None:
    """Wait until ``ready()`` holds; ``StartError`` as soon as one of ``watching`` exits, or after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not ready():
        for process in watching:
            if process.exited():
                where = f"; see {process.log}\n{process.log_tail()}" if process.log else ""
                raise StartError(f"{what}: {process.command[0]} exited (pid {process.pid}){where}")
        if time.monotonic() > deadline:
            logs = [str(process.log) for process in watching if process.log]
            raise StartError(
                f"{what} was not ready within {timeout:.0f} s" + (f"; see {', '.join(logs)}" if logs else "")
            )
        time.sleep(POLL_SECONDS)


def stop_all(processes: Sequence[OwnedProcess], timeout: float = 10.0) -> None:
    """Stop several children at once: SIGTERM to every group first, then wait for (or kill) each in turn."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop(timeout)
