"""Benchmark 3: how many messages one web process delivers per second, by number of subscribers; memory per idle socket.

Fan-out: one operation with N subscribers (1, 10, 100, 1000); a separate publisher writes entries as fast as asked,
at ``min(max-rate, offered / N)`` entries/s, so that every cell offers more deliveries than one Python process can
send (except N=1, which is publisher-bound). Reported per server (median over rounds):
- delivered msg/s: messages received by the clients / time from the first to the last receipt;
- server CPU (% of one core) over the cell, and delivered messages per server CPU-second (its capacity per core);
- p50 latency, which shows how far behind the server fell; delivered / expected within the drain time.

Memory: RSS growth of the web process per idle WebSocket (1000 sockets on one operation).

Both sides share this machine's cores: the fleet's CPU is shown so a reader sees which side saturated.

    .venv/bin/python -m benchmarks.bench_fanout            # full run, about 2 minutes
    .venv/bin/python -m benchmarks.bench_fanout --quick    # 1, 10, 100 subscribers, one short round
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

from benchmarks._children import SERVER_LABELS, Fleet, LoadGen, Server, pick_servers
from benchmarks._probes import CpuMeter, rss_bytes
from benchmarks._report import fmt_ms, load_line, machine_line, median, ratio, reproduce_command, table
from benchmarks._run import Run, bench_run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1, 10 and 100 subscribers, 1 round, 1.5 s cells")
    parser.add_argument("--servers", default="ours,floor", help="comma-separated: ours,floor,seed")
    parser.add_argument("--subscribers", default="1,10,100,1000")
    parser.add_argument("--offered", type=float, default=60000, help="deliveries per second offered to each cell")
    parser.add_argument("--max-rate", type=float, default=3000, help="cap on entries written per second")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of writing per cell")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--idle-sockets", type=int, default=1000, help="sockets for the memory measurement")
    parser.add_argument("--publisher", default="auto", choices=["auto", "report_progress", "script"])
    parser.add_argument("--redis-url", default=None)
    known, _ = parser.parse_known_args()
    if known.quick:  # shorter defaults; options given explicitly still win
        parser.set_defaults(subscribers="1,10,100", duration=1.5, rounds=1, idle_sockets=200)
    return parser.parse_args()


def run_cell(
    run: Run, server: Server, fleet: Fleet, loadgen: LoadGen, subscribers: int, args: argparse.Namespace
) -> dict[str, Any]:
    rate = min(args.max_rate, args.offered / subscribers)
    op = run.op("fan", server.kind, subscribers)
    fleet.connect(server.url, [op], subscribers)
    try:
        time.sleep(0.3)
        meter = CpuMeter(server.pid, fleet.pid).start()
        loadgen.start([op], rate, args.duration)
        done = loadgen.finish(args.duration)
        result = fleet.collect({op: done["published"][op]}, args.drain)
        server_cpu, fleet_cpu = meter.stop()
    finally:
        fleet.close_all()
    result.update(
        rate=done["achieved_rate"],
        offered=done["achieved_rate"] * subscribers,
        throughput=result["received"] / result["span_s"] if result["span_s"] else float("nan"),
        server_cpu=server_cpu,
        fleet_cpu=fleet_cpu,
        per_cpu_second=result["received"] / meter.seconds[0] if meter.seconds[0] else float("nan"),
    )
    return result


def idle_memory(run: Run, server: Server, fleet: Fleet, sockets: int) -> float:
    """RSS growth of the server per idle socket, in bytes (sockets on one operation)."""
    op = run.op("mem", server.kind)
    before = rss_bytes(server.pid)
    fleet.connect(server.url, [op], sockets)
    try:
        time.sleep(1.5)
        after = rss_bytes(server.pid)
    finally:
        fleet.close_all()
    return (after - before) / sockets


def main() -> None:
    args = parse_args()
    kinds = pick_servers([kind.strip() for kind in args.servers.split(",") if kind.strip()])
    counts = [int(n) for n in args.subscribers.split(",")]
    results: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    memory: dict[str, float] = {}
    started = time.monotonic()
    print(f"Benchmark 3: fan-out by one web process. {machine_line()}", flush=True)
    with bench_run(args.redis_url) as run:
        stack = run.start(kinds, args.publisher)
        servers, loadgen, fleet = stack.servers, stack.loadgen, stack.fleet
        print(f"publisher: {loadgen.mode}; {args.rounds} round(s) of {args.duration:g} s cells", flush=True)
        for kind in kinds:  # first, while each process is fresh
            memory[kind] = idle_memory(run, servers[kind], fleet, args.idle_sockets)
        for round_index in range(args.rounds):
            for subscribers in counts:
                shift = round_index % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:
                    result = run_cell(run, servers[kind], fleet, loadgen, subscribers, args)
                    results[kind, subscribers].append(result)
                    print(
                        f"  round {round_index + 1} {kind:>12} {subscribers:>5} subs: "
                        f"{result['throughput']:.0f} msg/s at {result['server_cpu']:.0f} % CPU, "
                        f"{result['expected'] - result['missing']}/{result['expected']}",
                        flush=True,
                    )
    print_tables(kinds, counts, results, memory, args, time.monotonic() - started, run.load_report)


def print_tables(
    kinds: list[str],
    counts: list[int],
    results: dict[tuple[str, int], list[dict[str, Any]]],
    memory: dict[str, float],
    args: argparse.Namespace,
    elapsed: float,
    load_report: str,
) -> None:
    rows = []
    for subscribers in counts:
        throughput = {kind: median([r["throughput"] for r in results[kind, subscribers]]) for kind in kinds}
        for kind in kinds:
            rounds = results[kind, subscribers]
            rows.append(
                [
                    subscribers,
                    SERVER_LABELS[kind],
                    f"{median([r['rate'] for r in rounds]):.0f}",
                    f"{median([r['offered'] for r in rounds]):.0f}",
                    f"{throughput[kind]:.0f}",
                    ratio(throughput[kind], throughput["floor"]) if "floor" in throughput else "n/a",
                    f"{median([r['server_cpu'] for r in rounds]):.0f}",
                    f"{median([r['per_cpu_second'] for r in rounds]):.0f}",
                    fmt_ms(median([r["p50_ms"] for r in rounds])),
                    f"{sum(r['expected'] - r['missing'] for r in rounds)}/{sum(r['expected'] for r in rounds)}",
                    sum(r["duplicates"] for r in rounds),
                    f"{median([r['fleet_cpu'] for r in rounds]):.0f}",
                ]
            )
    print()
    print(f"Fan-out from one operation, median over {args.rounds} round(s) of {args.duration:g} s")
    print()
    headers = [
        "subs",
        "server",
        "entries/s written",
        "msg/s offered",
        "msg/s delivered",
        "vs floor",
        "server CPU %",
        "msg per server CPU-s",
        "p50 ms",
        "delivered/expected",
        "dup",
        "fleet CPU %",
    ]
    print(table(headers, rows))
    print()
    print(f"Memory per idle WebSocket ({args.idle_sockets} sockets on one operation)")
    print()
    print(table(["server", "RSS KiB per socket"], [[SERVER_LABELS[k], f"{memory[k] / 1024:.1f}"] for k in kinds]))
    print()
    print(f"Reproduce: {reproduce_command('benchmarks.bench_fanout')}   ({elapsed:.0f} s; {load_line()})")
    print(load_report)


if __name__ == "__main__":
    main()
