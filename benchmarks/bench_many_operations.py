"""Benchmark 2: 1000 operations with one subscriber each, ours beside one-XREAD-per-operation and the seed style.

For each server, in turn and round after round: connect one WebSocket client to each of N operations (1000), then
- idle (nothing written): the web process's TCP connections to Redis (psutil) and what Redis says each last did
  (``CLIENT LIST``), and its CPU (% of one core, from psutil ``cpu_times`` over the interval);
- load (one entry per second per operation, evenly spread, from a separate publisher process): its CPU and the
  clients' p50 / p99 latency, delivered / expected, duplicates;
- memory: RSS growth of the web process per connected client (connections to distinct operations), from the first
  round, while the process is fresh (later rounds reuse memory the process kept).
Medians over rounds; ratios against the one-XREAD-per-operation baseline of the same run.

Targets (issue 3): ours at most 2 reading connections; CPU no higher than one-XREAD-per-operation; p99 within 1.5x
its p99; idle CPU near zero.

    .venv/bin/python -m benchmarks.bench_many_operations            # full run, about 3 minutes
    .venv/bin/python -m benchmarks.bench_many_operations --quick    # 200 operations, one short round
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

from benchmarks._children import SERVER_LABELS, Fleet, LoadGen, Server, pick_servers
from benchmarks._probes import CpuMeter, connection_commands, redis_connections, rss_bytes
from benchmarks._report import fmt_ms, load_line, machine_line, median, ratio, reproduce_command, table
from benchmarks._run import Run, bench_run

IDLE_CPU_NEAR_ZERO = 2.0
"""Percent of one core below which we call an idle process's CPU "near zero"."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 operations, 1 round, short phases")
    parser.add_argument("--servers", default="ours,xread-per-op,seed", help="comma-separated: ours,xread-per-op,seed")
    parser.add_argument("--operations", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1.0, help="entries per second per operation")
    parser.add_argument("--idle", type=float, default=4.0, help="seconds of the idle measurement")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of writing")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between connecting and measuring")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drain", type=float, default=5.0)
    parser.add_argument("--publisher", default="auto", choices=["auto", "report_progress", "script"])
    parser.add_argument("--redis-url", default=None)
    known, _ = parser.parse_known_args()
    if known.quick:  # shorter defaults; options given explicitly still win
        parser.set_defaults(operations=200, idle=2.0, duration=3.0, settle=1.0, rounds=1)
    return parser.parse_args()


def run_server(
    run: Run, server: Server, fleet: Fleet, loadgen: LoadGen, round_index: int, args: argparse.Namespace
) -> dict[str, Any]:
    ops = [run.op("many", server.kind, round_index, index) for index in range(args.operations)]
    rss_before = rss_bytes(server.pid)
    fleet.connect(server.url, ops, 1)
    try:
        time.sleep(args.settle)
        rss_after = rss_bytes(server.pid)
        ports = redis_connections(server.pid, run.redis_url)
        commands = connection_commands(run.redis_url, ports)
        meter = CpuMeter(server.pid, fleet.pid).start()
        time.sleep(args.idle)
        idle_cpu, idle_fleet_cpu = meter.stop()
        meter.start()
        loadgen.start(ops, args.rate, args.duration)
        time.sleep(args.duration / 2)
        load_ports = redis_connections(server.pid, run.redis_url)
        done = loadgen.finish(args.duration)
        load_cpu, load_fleet_cpu = meter.stop()
        result = fleet.collect(done["published"], args.drain)
    finally:
        fleet.close_all()
    time.sleep(0.5)  # let the server notice the closes before the next server's turn
    result.update(
        connections_idle=len(ports),
        commands_idle=commands,
        connections_load=len(load_ports),
        idle_cpu=idle_cpu,
        load_cpu=load_cpu,
        load_fleet_cpu=load_fleet_cpu,
        idle_fleet_cpu=idle_fleet_cpu,
        rss_per_connection=(rss_after - rss_before) / args.operations,
        publisher_rate=done["achieved_rate"],
    )
    return result


def main() -> None:
    args = parse_args()
    kinds = pick_servers([kind.strip() for kind in args.servers.split(",") if kind.strip()])
    results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    started = time.monotonic()
    print(f"Benchmark 2: {args.operations} operations, one subscriber each. {machine_line()}", flush=True)
    with bench_run(args.redis_url) as run:
        stack = run.start(kinds, args.publisher)
        servers, loadgen, fleet = stack.servers, stack.loadgen, stack.fleet
        print(f"publisher: {loadgen.mode}; {args.rounds} round(s)", flush=True)
        for round_index in range(args.rounds):
            shift = round_index % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                result = run_server(run, servers[kind], fleet, loadgen, round_index, args)
                results[kind].append(result)
                print(
                    f"  round {round_index + 1} {kind:>12}: {result['connections_idle']} Redis conns "
                    f"({result['commands_idle']}), CPU idle {result['idle_cpu']:.1f} % "
                    f"load {result['load_cpu']:.1f} %, "
                    f"p50 {fmt_ms(result['p50_ms'])} p99 {fmt_ms(result['p99_ms'])} ms, "
                    f"{result['expected'] - result['missing']}/{result['expected']}",
                    flush=True,
                )
    print_tables(kinds, results, args, time.monotonic() - started, run.load_report)


def print_tables(
    kinds: list[str],
    results: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    elapsed: float,
    load_report: str,
) -> None:
    summary: dict[str, dict[str, Any]] = {}
    rows = []
    for kind in kinds:
        rounds = results[kind]
        s = summary[kind] = {
            "connections": max(max(r["connections_idle"], r["connections_load"]) for r in rounds),
            "commands": rounds[-1]["commands_idle"] or "-",
            "idle_cpu": median([r["idle_cpu"] for r in rounds]),
            "load_cpu": median([r["load_cpu"] for r in rounds]),
            "fleet_cpu": median([r["load_fleet_cpu"] for r in rounds]),
            "p50": median([r["p50_ms"] for r in rounds]),
            "p99": median([r["p99_ms"] for r in rounds]),
            "max": median([r["max_ms"] for r in rounds]),
            "delivered": sum(r["expected"] - r["missing"] for r in rounds),
            "expected": sum(r["expected"] for r in rounds),
            "duplicates": sum(r["duplicates"] for r in rounds),
            "rss": rounds[0]["rss_per_connection"],  # a fresh process; later rounds reuse the memory it freed
        }
        rows.append(
            [
                SERVER_LABELS[kind],
                s["connections"],
                s["commands"],
                f"{s['idle_cpu']:.1f}",
                f"{s['load_cpu']:.1f}",
                fmt_ms(s["p50"]),
                fmt_ms(s["p99"]),
                fmt_ms(s["max"]),
                f"{s['delivered']}/{s['expected']}",
                s["duplicates"],
                f"{s['rss'] / 1024:.1f}",
                f"{s['fleet_cpu']:.0f}",
            ]
        )
    total_rate = args.operations * args.rate
    print()
    print(
        f"{args.operations} operations x 1 subscriber, {args.rate:g} entry/s each ({total_rate:g} entries/s); "
        f"median over {args.rounds} round(s)"
    )
    print()
    headers = [
        "server",
        "Redis conns",
        "conns by last command",
        "CPU idle %",
        "CPU at load %",
        "p50 ms",
        "p99 ms",
        "max ms",
        "delivered/expected",
        "dup",
        "RSS KiB/conn (round 1)",
        "fleet CPU %",
    ]
    print(table(headers, rows))
    ours, base = summary.get("ours"), summary.get("xread-per-op")
    if ours is not None and base is not None:
        checks = [
            ["Redis connections held by ours <= 2", str(ours["connections"]), _verdict(ours["connections"] <= 2)],
            [
                "CPU at load, ours / one-XREAD-per-op <= 1",
                ratio(ours["load_cpu"], base["load_cpu"]),
                _verdict(ours["load_cpu"] <= base["load_cpu"]),
            ],
            [
                "p99, ours / one-XREAD-per-op <= 1.5",
                ratio(ours["p99"], base["p99"]),
                _verdict(ours["p99"] <= 1.5 * base["p99"]),
            ],
            [
                f"idle CPU of ours near zero (< {IDLE_CPU_NEAR_ZERO:g} % of a core)",
                f"{ours['idle_cpu']:.2f} %",
                _verdict(ours["idle_cpu"] < IDLE_CPU_NEAR_ZERO),
            ],
            [
                "everything delivered once",
                f"{ours['delivered']}/{ours['expected']}, {ours['duplicates']} dup",
                _verdict(ours["delivered"] == ours["expected"] and not ours["duplicates"]),
            ],
        ]
        print()
        print(table(["target", "ours", "verdict"], checks))
    print()
    print(f"Reproduce: {reproduce_command('benchmarks.bench_many_operations')}   ({elapsed:.0f} s; {load_line()})")
    print(load_report)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    main()
