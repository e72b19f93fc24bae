"""One benchmark run: its Redis and key prefix, its log folder and the children it owns, all cleaned up on exit
(also on errors, Ctrl-C and SIGTERM)."""

from __future__ import annotations

import contextlib
import signal
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeVar

from benchmarks._children import Child, Fleet, LoadGen, Server
from benchmarks._probes import OtherLoad, delete_prefix
from devtools.servers import resolve_redis

ChildT = TypeVar("ChildT", bound=Child)


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


@dataclass
class Stack:
    """The processes a benchmark drives: web servers by kind, the publisher and the client fleet."""

    servers: dict[str, Server]
    loadgen: LoadGen
    fleet: Fleet


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
            run.load_report = others.report([child.pid for child in children])
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
