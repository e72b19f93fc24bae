"""Runs the demo (``python -m example_project.demo``) to its end, noting every process it started on the way."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class DemoRun:
    """How one demo run ended: its exit code, its output, its pid and the pids of every process it started."""

    code: int
    output: str
    pid: int
    children: set[int]

    def leftovers(self) -> list[int]:
        """Processes the demo started that still run (reaped zombies do not count)."""
        return [pid for pid in self.children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]

    @property
    def queue(self) -> str:
        """The demo names its queue and exchanges after its pid."""
        return f"celery-progress-ws-demo-{self.pid}"


def run_demo(arguments: list[str], environment: dict[str, str], timeout: float = 120) -> DemoRun:
    """Run the demo with ``arguments`` and ``environment`` added to this process's, until it exits."""
    children: set[int] = set()
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "example_project.demo", *arguments],
        cwd=ROOT,
        env={**os.environ, **environment},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        try:
            parent = psutil.Process(demo.pid)
            assert demo.stdout is not None
            for line in demo.stdout:
                lines.append(line)
                children.update(child.pid for child in parent.children(recursive=True))
            code = demo.wait(timeout)
        finally:
            if demo.poll() is None:
                demo.kill()
    return DemoRun(code, "".join(lines), demo.pid, children)
