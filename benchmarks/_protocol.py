"""What the benchmark and its child processes agree on: JSON lines on stdin/stdout, the WebSocket URL shape, and
that every child exits by itself when the benchmark that started it goes away."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

WS_PATH = "/progress/operations/{op}/ws"
CHILD_MAX_SECONDS = 1200.0
"""Every child exits by itself after this long, whatever happens to the benchmark that started it."""


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
