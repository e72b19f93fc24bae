"""Web delivery on Redis Cluster against one server: publish-to-WebSocket latency of ``ours`` on a private plain
valkey-server and on a private cluster of 3 primaries + 3 replicas, in the same run, interleaved round by round.

Each topology gets its own web process (``ours``) and publisher process (``report_progress(..., force=True)``); one
client fleet drives both. Cell shapes: ``OPSxSUBS`` operations times subscribers per operation, the operations placed
evenly over the cluster's three shards (a one-operation cell moves to the next shard each round). Rates are entries
per second in total, spread evenly over the cell's operations. Reported: medians over rounds of p50 / p99 / max,
delivered / expected and duplicates summed over rounds, the web process's CPU per delivered message, the Redis
connections the web process holds (and the last command on each, as the servers see it), and cluster / single ratios.

Then, on the cluster only, a few rounds of faults on the shard of one watched operation while it is written at a fixed
rate: a graceful ``CLUSTER FAILOVER`` and a SIGKILL of the primary (its replica is promoted once the node timeout has
passed). Reported: how long the fault took to settle, the largest publish-to-WebSocket delay of the entries written
around it (entries a worker wrote while no primary took writes wait in its buffer) and whether every one arrived once.

    .venv/bin/python -m benchmarks.bench_cluster_latency            # full run, about 3 minutes
    .venv/bin/python -m benchmarks.bench_cluster_latency --quick    # one short round, two faults
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from redis.crc import key_slot

from benchmarks._children import Child, Fleet, LoadGen, Server
from benchmarks._probes import CpuMeter, connection_commands
from benchmarks._report import fmt_ms, load_line, machine_line, median, ratio, reproduce_command, table
from benchmarks._run import Run, bench_run
from devtools._server_process import ServerProcess, distinct_free_ports
from devtools.cluster import SLOTS, PrivateCluster

SETTLE_SECONDS = 0.3
"""Pause between the fleet being connected and the first write, so the web process has subscribed."""
SHARDS = 3
TOPOLOGIES = ("single", "cluster")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 1.5 s cells, 1 round of each fault")
    parser.add_argument("--shapes", default="1x1,30x10,1x100", help="OPSxSUBS: operations x subscribers per operation")
    parser.add_argument("--rates", default="20,200", help="entries per second in total, over the cell's operations")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of writing per cell (at least)")
    parser.add_argument("--min-entries", type=int, default=60, help="cells last long enough to write this many")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late entries after the last")
    parser.add_argument("--fault-rounds", type=int, default=3, help="rounds of each fault (0: none)")
    parser.add_argument("--fault-rate", type=float, default=50.0, help="entries per second during a fault round")
    parser.add_argument("--fault-subscribers", type=int, default=10)
    parser.add_argument("--node-timeout-ms", type=int, default=1000, help="cluster-node-timeout of every node")
    known, _ = parser.parse_known_args()
    if known.quick:  # shorter defaults; options given explicitly still win
        parser.set_defaults(duration=1.5, rounds=1, min_entries=20, fault_rounds=1)
    return parser.parse_args()


@contextlib.contextmanager
def plain_server() -> Iterator[ServerProcess]:
    """A private valkey-server on a free port, stopped by its pid and its files removed on exit."""
    directory = Path(tempfile.mkdtemp(prefix="cpws-bench-plain-"))
    node = ServerProcess(distinct_free_ports(1)[0], directory, ["--save", "", "--appendonly", "no"])
    node.start()
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(directory, ignore_errors=True)


def shard_of(operation_id: str) -> int:
    """The shard that serves the operation's keys in a freshly formed cluster (slots split evenly, in order)."""
    return key_slot(operation_id.encode()) * SHARDS // SLOTS


def spread_ops(run: Run, count: int, first_shard: int, *parts: object) -> list[str]:
    """``count`` fresh operation ids placed round-robin over the shards, starting at ``first_shard``."""
    ops: list[str] = []
    while len(ops) < count:
        op = run.op(*parts)
        if shard_of(op) == (first_shard + len(ops)) % SHARDS:
            ops.append(op)
    return ops


def web_connections(server: Child, ports: list[int]) -> str:
    """Connections from the web process to each Redis port, with the last command of each as that server sees it."""
    by_port: Counter[int] = Counter()
    local: dict[int, list[int]] = defaultdict(list)
    for conn in psutil.Process(server.pid).net_connections(kind="tcp"):
        if conn.raddr and conn.raddr.port in ports and conn.status == psutil.CONN_ESTABLISHED:
            by_port[conn.raddr.port] += 1
            local[conn.raddr.port].append(conn.laddr.port)
    parts = []
    for port in ports:
        if by_port[port]:
            commands = connection_commands(f"redis://127.0.0.1:{port}/0", local[port])
            parts.append(f"{by_port[port]} ({commands})")
    return f"{sum(by_port.values())}: " + " + ".join(parts)


def run_cell(
    run: Run,
    server: Server,
    loadgen: LoadGen,
    fleet: Fleet,
    ports: list[int],
    ops: list[str],
    subscribers: int,
    rate: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    duration = max(args.duration, args.min_entries / rate)
    fleet.connect(server.url, ops, subscribers)
    try:
        time.sleep(SETTLE_SECONDS)
        meter = CpuMeter(server.pid).start()
        loadgen.start(ops, rate / len(ops), duration)
        done = loadgen.finish(duration)
        result = fleet.collect(done["published"], args.drain)
        meter.stop()
        result["cpu_us_per_message"] = 1e6 * meter.seconds[0] / result["received"] if result["received"] else 0.0
        result["connections"] = web_connections(server, ports)
    finally:
        fleet.close_all()
    return result


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "p50": median([r["p50_ms"] for r in rounds]),
        "p99": median([r["p99_ms"] for r in rounds]),
        "max": median([r["max_ms"] for r in rounds]),
        "delivered": sum(r["expected"] - r["missing"] for r in rounds),
        "expected": sum(r["expected"] for r in rounds),
        "duplicates": sum(r["duplicates"] for r in rounds),
        "out_of_order": sum(r["out_of_order"] for r in rounds),
        "cpu": median([r["cpu_us_per_message"] for r in rounds]),
        "connections": rounds[-1]["connections"],
        "closes": sorted(
            {code for r in rounds for code in r["close_codes"]} | {kind for r in rounds for kind in r["other"]}
        ),
    }


def fault_round(
    run: Run,
    cluster: PrivateCluster,
    server: Server,
    loadgen: LoadGen,
    fleet: Fleet,
    fault: str,
    shard: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Write to one operation on ``shard`` at a fixed rate, break that shard's primary a second in, wait for the
    cluster to settle and the writes to end, then collect what the viewers received."""
    op = spread_ops(run, 1, shard, "fault", fault)[0]
    duration = 4.0 + args.node_timeout_ms / 500
    fleet.connect(server.url, [op], args.fault_subscribers)
    try:
        time.sleep(SETTLE_SECONDS)
        loadgen.start([op], args.fault_rate, duration)
        time.sleep(1.0)
        started = time.monotonic()
        if fault == "failover":
            cluster.failover(cluster.replicas_of(shard)[0])
            victim = None
        else:
            victim = cluster.kill_primary(shard)
        settled = time.monotonic() - started
        done = loadgen.finish(duration)
        result = fleet.collect(done["published"], args.drain + 30)
    finally:
        fleet.close_all()
    if victim is not None:
        cluster.restart_node(victim)  # it rejoins as the shard's replica, ready for the next round
    result["settled_s"] = settled
    result["unsent"] = {outcome: n for outcome, n in done["outcomes"].items() if outcome != "sent"}
    return result


def log_summary(path: Path) -> str:
    """Each distinct line of a child's log with its count, so warnings of the web process show in the report."""
    lines = Counter(path.read_text(errors="replace").splitlines()) if path.exists() else Counter()
    return "; ".join(f"{count} x {line}" for line, count in lines.most_common(5)) or "empty"


def main() -> None:
    args = parse_args()
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
    rates = [float(rate) for rate in args.rates.split(",")]
    results: dict[tuple[str, int, int, float], list[dict[str, Any]]] = defaultdict(list)
    faults: dict[str, list[dict[str, Any]]] = defaultdict(list)
    started = time.monotonic()
    print(f"Web delivery on a cluster vs one server. {machine_line()}", flush=True)
    with (
        plain_server() as plain,
        PrivateCluster(primaries=SHARDS, replicas=1, node_timeout_ms=args.node_timeout_ms) as cluster,
        bench_run(plain.url) as run,
    ):
        urls = {"single": plain.url, "cluster": cluster.url}
        ports = {"single": [plain.port], "cluster": [node.port for node in cluster.nodes]}
        logs = {name: run.log_dir / name for name in TOPOLOGIES}  # each topology's children log apart
        for folder in logs.values():
            folder.mkdir()
        servers = {name: run.add(Server("ours", urls[name], run.prefix, logs[name])) for name in TOPOLOGIES}
        loadgens = {
            name: run.add(LoadGen(urls[name], run.prefix, logs[name], "report_progress")) for name in TOPOLOGIES
        }
        fleet = run.add(Fleet(run.log_dir))
        for name in TOPOLOGIES:
            servers[name].wait_ready()
            loadgens[name].wait_ready()
        print(f"{args.rounds} round(s); cells of {args.duration:g} s or {args.min_entries} entries", flush=True)
        for round_index in range(args.rounds):
            for ops_count, subscribers in shapes:
                for rate in rates:
                    ops = spread_ops(run, ops_count, round_index, "lat", ops_count, subscribers, int(rate))
                    order = TOPOLOGIES if round_index % 2 == 0 else TOPOLOGIES[::-1]
                    for name in order:
                        result = run_cell(
                            run, servers[name], loadgens[name], fleet, ports[name], ops, subscribers, rate, args
                        )
                        results[name, ops_count, subscribers, rate].append(result)
                        print(
                            f"  round {round_index + 1} {name:>7} {ops_count}x{subscribers} {rate:g}/s: "
                            f"p50 {fmt_ms(result['p50_ms'])} p99 {fmt_ms(result['p99_ms'])} ms, "
                            f"{result['expected'] - result['missing']}/{result['expected']}, "
                            f"{result['cpu_us_per_message']:.0f} µs CPU/msg",
                            flush=True,
                        )
        for round_index in range(args.fault_rounds):
            for fault in ("failover", "kill"):
                shard = round_index % SHARDS
                result = fault_round(run, cluster, servers["cluster"], loadgens["cluster"], fleet, fault, shard, args)
                faults[fault].append(result)
                print(
                    f"  fault {fault} shard {shard}: settled in {result['settled_s']:.1f} s, max delay "
                    f"{fmt_ms(result['max_ms'])} (ms unless marked), "
                    f"{result['expected'] - result['missing']}/{result['expected']}",
                    flush=True,
                )
    print_tables(shapes, rates, results, faults, args, time.monotonic() - started, run.load_report)
    for name in TOPOLOGIES:
        print(f"web process log ({name}): {log_summary(servers[name].log_path)}")


def print_tables(
    shapes: list[tuple[int, ...]],
    rates: list[float],
    results: dict[tuple[str, int, int, float], list[dict[str, Any]]],
    faults: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    elapsed: float,
    load_report: str,
) -> None:
    rows = []
    ratios = []
    for ops_count, subscribers in shapes:
        for rate in rates:
            summary = {name: summarize(results[name, ops_count, subscribers, rate]) for name in TOPOLOGIES}
            for name in TOPOLOGIES:
                s = summary[name]
                rows.append(
                    [
                        f"{ops_count} x {subscribers}",
                        f"{rate:g}",
                        name,
                        fmt_ms(s["p50"]),
                        fmt_ms(s["p99"]),
                        fmt_ms(s["max"]),
                        f"{s['delivered']}/{s['expected']}",
                        s["duplicates"],
                        s["out_of_order"],
                        f"{s['cpu']:.0f}",
                        ", ".join(s["closes"]) or "-",
                        s["connections"],
                    ]
                )
            single, clustered = summary["single"], summary["cluster"]
            ratios.append(
                [
                    f"{ops_count} x {subscribers}",
                    f"{rate:g}",
                    ratio(clustered["p50"], single["p50"]),
                    ratio(clustered["p99"], single["p99"]),
                    ratio(clustered["cpu"], single["cpu"]),
                ]
            )
    print()
    print(f"Publish-to-WebSocket latency, ms (median over {args.rounds} round(s); delivered summed over rounds)")
    print()
    headers = [
        "ops x subs",
        "entries/s",
        "topology",
        "p50",
        "p99",
        "max",
        "delivered/expected",
        "dup",
        "out of order",
        "web CPU µs/msg",
        "closes / other messages",
        "web process' Redis connections (last command)",
    ]
    print(table(headers, rows))
    print()
    print("Cluster / single")
    print()
    print(table(["ops x subs", "entries/s", "p50", "p99", "web CPU/msg"], ratios))
    if faults:
        print()
        print(
            f"Faults on the cluster (node timeout {args.node_timeout_ms} ms): one operation on the faulted shard, "
            f"{args.fault_subscribers} viewers, {args.fault_rate:g} entries/s; settled = until every node agrees"
        )
        print()
        fault_rows = []
        for fault, rounds in faults.items():
            for r in rounds:
                fault_rows.append(
                    [
                        "CLUSTER FAILOVER" if fault == "failover" else "primary SIGKILL",
                        f"{r['settled_s']:.1f} s",
                        fmt_ms(r["p50_ms"]),
                        fmt_ms(r["max_ms"]),
                        f"{r['expected'] - r['missing']}/{r['expected']}",
                        r["duplicates"],
                        r["out_of_order"],
                        ", ".join(f"{k}: {v}" for k, v in r["unsent"].items()) or "-",
                    ]
                )
        fault_headers = ["fault", "settled", "p50 ms", "max delay ms", "delivered/expected", "dup", "out of order"]
        print(table([*fault_headers, "writes not sent at once"], fault_rows))
    print()
    print(f"Reproduce: {reproduce_command('benchmarks.bench_cluster_latency')}   ({elapsed:.0f} s; {load_line()})")
    print(load_report)


if __name__ == "__main__":
    main()
