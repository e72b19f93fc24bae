"""The launcher every test server, the e2e stack, the demo and the benchmarks use (devtools.processes)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from devtools.processes import OwnedProcess, StartError, free_port, port_answers, stop_all, wait_until

PYTHON = sys.executable


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stop_ends_the_child_and_its_grandchildren(tmp_path: Path) -> None:
    """stop() signals the child's whole process group, so a grandchild it started is gone too."""
    marker = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time;"
        f"p = subprocess.Popen([{PYTHON!r}, '-c', 'import time; time.sleep(60)']);"
        f"open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    child = OwnedProcess([PYTHON, "-c", code])
    child.wait_until(lambda: marker.exists() and marker.read_text() != "", 20, "the grandchild")
    grandchild = int(marker.read_text())
    assert os.getpgid(grandchild) == child.pid
    assert child.stop(10) == -signal.SIGTERM
    wait_until(lambda: not alive(grandchild), timeout=10, what="the grandchild's exit")


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    """A child that ignores SIGTERM is killed once the stop timeout has passed."""
    ready = tmp_path / "ready"
    code = (
        f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open({str(ready)!r}, 'w'); time.sleep(60)"
    )
    child = OwnedProcess([PYTHON, "-c", code])
    child.wait_until(ready.exists, 20, "the child")
    assert child.stop(0.3) == -signal.SIGKILL


def test_a_child_reaped_by_its_user_is_not_signalled_again() -> None:
    """Once the Popen was waited for, stop() only returns its status: the pid may belong to someone else by now."""
    child = OwnedProcess([PYTHON, "-c", "raise SystemExit(7)"])
    assert child.popen.wait(20) == 7
    assert child.exited()
    assert child.stop() == 7


def test_waiting_fails_fast_with_the_log_when_the_child_exits(tmp_path: Path) -> None:
    """wait_until raises StartError as soon as the child exits, quoting the end of its log."""
    log = tmp_path / "child.log"
    child = OwnedProcess([PYTHON, "-c", "print('cannot start: no config'); raise SystemExit(2)"], log=log)
    with pytest.raises(StartError, match="cannot start: no config"):
        child.wait_until(lambda: False, 20, "the child")
    assert child.stop() == 2


def test_waiting_for_a_port_returns_once_the_child_listens() -> None:
    """wait_for_port returns when the child accepts connections; stop_all then ends it."""
    port = free_port()
    code = (
        "import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
    )
    child = OwnedProcess([PYTHON, "-c", code])
    child.wait_for_port(port, 20)
    assert port_answers(port)
    stop_all([child], 10)
    assert child.popen.returncode == -signal.SIGTERM


def test_waiting_gives_up_after_its_timeout() -> None:
    """wait_until raises StartError when the condition does not hold in time, and the child keeps running."""
    with OwnedProcess([PYTHON, "-c", "import time; time.sleep(60)"]) as child:
        with pytest.raises(StartError, match="not ready within"):
            child.wait_until(lambda: False, 0.2, "the child")
        assert not child.exited()
    assert child.popen.returncode == -signal.SIGTERM
