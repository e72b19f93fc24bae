"""Redis Cluster: what the worker half's writes cost on 1, 2 and 3 primaries against one plain server, and what the live
announcement costs the cluster bus with ``PUBLISH`` (broadcast to every node) against sharded ``SPUBLISH``.

1. Writes: ``WRITERS`` publisher processes (``ProgressPublisher``, throttle off, each entry one EVALSHA of XADD +
   EXPIRE + announcement) write round-robin over many operations as fast as they can. Reported: entries per second
   and server CPU per entry (user + sys of every node, from ``INFO cpu``), median of the rounds, and their ratio to
   the plain server. All servers are the same embedded valkey-server binary, private, on free ports, no replicas.
2. Bus: one client runs the library's append script with ``PUBLISH`` and with ``SPUBLISH`` on a cluster of 3 primaries
   + 3 replicas, alternating. Reported: cluster CPU per entry (all six nodes) and cluster-bus messages sent per entry.

    .venv/bin/python -m benchmarks.bench_cluster            # the full table (about 2-3 minutes)
    .venv/bin/python -m benchmarks.bench_cluster --quick    # fewer, shorter rounds

On a 2-core machine the writer processes and the servers share the cores: entries per second then measure the whole
system, and the CPU per entry is the figure that carries over to a bigger machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from celery_progress_ws import ProgressPublisher, ProgressSettings
from celery_progress_ws._core.append import APPEND_SCRIPT
from devtools._server_process import ServerProcess, distinct_free_ports
from devtools.cluster import PrivateCluster

WRITERS = 2
OPERATIONS = 400


def writer_main(url: str, prefix: str, seconds: float) -> None:
    """Child process: publish as fast as possible for ``seconds``, then print how many entries were sent."""
    settings = ProgressSettings(redis_url=url, key_prefix=prefix, throttle_seconds=0)
    operations = [str(uuid.uuid4()) for _ in range(OPERATIONS)]
    publisher = ProgressPublisher(settings)
    sent = 0
    publisher.publish(operations[0], "tick", {"i": -1})  # connect (and read the slot map) before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for operation in operations[:50]:
            publisher.publish(operation, "tick", {"i": sent, "pad": "x" * 100})
            sent += 1
        operations.append(operations.pop(0))
    publisher.close()
    print(json.dumps({"sent": sent}), flush=True)


def server_cpu(ports: Sequence[int]) -> float:
    """User + system CPU seconds every server on ``ports`` has used so far."""
    total = 0.0
    for port in ports:
        info = redis.Redis(port=port).info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def bus_messages(ports: Sequence[int]) -> int:
    """Cluster-bus messages every node has sent so far."""
    return sum(int(redis.Redis(port=port).cluster("INFO")["cluster_stats_messages_sent"]) for port in ports)


@contextmanager
def plain_server() -> Iterator[tuple[str, list[int]]]:
    port = distinct_free_ports(1)[0]
    node = ServerProcess(port, Path(tempfile.mkdtemp(prefix="cpws-bench-")), ["--save", "", "--appendonly", "no"])
    node.start()
    try:
        yield f"redis://127.0.0.1:{port}/0", [port]
    finally:
        node.stop()


@contextmanager
def cluster(primaries: int, replicas: int = 0) -> Iterator[tuple[str, list[int]]]:
    with PrivateCluster(primaries=primaries, replicas=replicas, node_timeout_ms=5000) as nodes:
        yield nodes.url, [node.port for node in nodes.nodes]


def write_round(url: str, ports: Sequence[int], seconds: float) -> tuple[float, float]:
    """Entries per second and server CPU microseconds per entry of one round of ``WRITERS`` processes."""
    prefix = f"bench-cluster:{uuid.uuid4().hex[:8]}:"
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_cluster", "--writer", url, prefix, str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(WRITERS)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("a writer did not start")
        cpu_before = server_cpu(ports)
        started = time.monotonic()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        sent = 0
        for child in children:
            assert child.stdout is not None
            sent += json.loads(child.stdout.readline())["sent"]
        elapsed = time.monotonic() - started
        cpu = server_cpu(ports) - cpu_before
    finally:
        for child in children:
            child.kill()
            child.wait()
    return sent / elapsed, cpu / sent * 1e6


def bus_round(client: RedisCluster, ports: Sequence[int], verb: str, count: int) -> tuple[float, float]:
    """Cluster CPU microseconds and bus messages per entry of ``count`` appends announced with ``verb``."""
    script = client.register_script(APPEND_SCRIPT)
    prefix = f"bench-bus:{uuid.uuid4().hex[:8]}:"
    keys = [f"{prefix}operation-progress:{{{uuid.uuid4()}}}" for _ in range(200)]
    cpu_before, bus_before = server_cpu(ports), bus_messages(ports)
    for i in range(count):
        key = keys[i % len(keys)]
        live = key.replace("progress:", "progress-live:")
        script(keys=[key], args=[1000, '{"type":"tick","data":{}}', 60, live, verb])
    cpu, bus = server_cpu(ports) - cpu_before, bus_messages(ports) - bus_before
    return cpu / count * 1e6, bus / count


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--writer", nargs=3, metavar=("URL", "PREFIX", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        writer_main(args.writer[0], args.writer[1], float(args.writer[2]))
        return
    rounds = args.rounds or (2 if args.quick else 3)
    seconds = 2.0 if args.quick else 4.0
    print(f"## Writes: {WRITERS} publisher processes, {seconds:.0f} s per round, median of {rounds} rounds\n")
    print("| servers | entries/s | vs plain | server CPU µs/entry | vs plain |")
    print("|---|---:|---:|---:|---:|")
    baseline: tuple[float, float] | None = None
    for name, topology in [
        ("plain server", plain_server()),
        ("cluster, 1 primary", cluster(1)),
        ("cluster, 2 primaries", cluster(2)),
        ("cluster, 3 primaries", cluster(3)),
    ]:
        with topology as (url, ports):
            results = [write_round(url, ports, seconds) for _ in range(rounds)]
        rate = statistics.median(result[0] for result in results)
        cpu = statistics.median(result[1] for result in results)
        baseline = baseline or (rate, cpu)
        print(f"| {name} | {rate:,.0f} | {rate / baseline[0]:.2f}x | {cpu:.1f} | {cpu / baseline[1]:.2f}x |")
    count = 5_000 if args.quick else 20_000
    print(f"\n## Live announcement on 3 primaries + 3 replicas: {count:,} appends per round, median of {rounds}\n")
    print("| announcement | cluster CPU µs/entry | bus messages/entry |")
    print("|---|---:|---:|")
    with cluster(3, replicas=1) as (url, ports):
        client = RedisCluster.from_url(url.replace("redis+cluster://", "redis://").split(",")[0])
        samples: dict[str, list[tuple[float, float]]] = {"PUBLISH": [], "SPUBLISH": []}
        for _ in range(rounds):
            for verb in samples:
                samples[verb].append(bus_round(client, ports, verb, count))
        client.close()
    for verb, results in samples.items():
        cpu = statistics.median(result[0] for result in results)
        bus = statistics.median(result[1] for result in results)
        print(f"| {verb} | {cpu:.1f} | {bus:.2f} |")


if __name__ == "__main__":
    main()
