"""Benchmark 1: latency from a worker process's write to receipt by WebSocket clients, ours beside two baselines.

One operation, N subscribers (1, 100, 1000), entries written at a fixed rate (20 and 200 per second) by a separate
publisher process (``report_progress(..., force=True)`` once it exists). Every server gets the same cells in the same
run, interleaved round by round; the tables show the median over rounds of each round's p50 / p99 / max, the
delivered / expected count summed over rounds, and ours / floor ratios.

Target (issue 3): ours within 1.5x the floor's p50 and p99, nothing dropped, nothing duplicated.

    .venv/bin/python -m benchmarks.bench_latency            # full run, about 4 minutes
    .venv/bin/python -m benchmarks.bench_latency --quick    # one short round, 1 and 100 subscribers
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

from benchmarks._children import SERVER_LABELS, Fleet, LoadGen, Server, pick_servers
from benchmarks._probes import CpuMeter
from benchmarks._report import fmt_ms, load_line, machine_line, median, ratio, reproduce_command, table
from benchmarks._run import Run, bench_run

SETTLE_SECONDS = 0.3
"""Pause between the fleet being connected and the first write, so every server has started watching."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 1.5 s cells with 1 and 100 subscribers")
    parser.add_argument("--servers", default="ours,floor,seed", help="comma-separated: ours,floor,seed")
    parser.add_argument("--subscribers", default="1,100,1000")
    parser.add_argument("--rates", default="20,200", help="entries per second")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of writing per cell (at least)")
    parser.add_argument("--min-entries", type=int, default=60, help="cells last long enough to write this many")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late entries after the last")
    parser.add_argument("--publisher", default="auto", choices=["auto", "report_progress", "script"])
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate, as browsers do")
    parser.add_argument("--redis-url", default=None, help="default: $CELERY_PROGRESS_WS_REDIS_URL or localhost")
    known, _ = parser.parse_known_args()
    if known.quick:  # shorter defaults; options given explicitly still win
        parser.set_defaults(subscribers="1,100", duration=1.5, rounds=1, min_entries=20)
    return parser.parse_args()


def run_cell(
    run: Run, server: Server, fleet: Fleet, loadgen: LoadGen, subscribers: int, rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    op = run.op("lat", server.kind, subscribers, int(rate))
    duration = max(args.duration, args.min_entries / rate)
    fleet.connect(server.url, [op], subscribers)
    try:
        time.sleep(SETTLE_SECONDS)
        meter = CpuMeter(server.pid, fleet.pid).start()
        loadgen.start([op], rate, duration)
        done = loadgen.finish(duration)
        result = fleet.collect({op: done["published"][op]}, args.drain)
        result["server_cpu"], result["fleet_cpu"] = meter.stop()
        result["publisher_behind_ms"] = done["behind_max_ms"]
    finally:
        fleet.close_all()
    return result


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "p50": median([r["p50_ms"] for r in rounds]),
        "p99": median([r["p99_ms"] for r in rounds]),
        "max": median([r["max_ms"] for r in rounds]),
        "received_unique": sum(r["expected"] - r["missing"] for r in rounds),
        "expected": sum(r["expected"] for r in rounds),
        "duplicates": sum(r["duplicates"] for r in rounds),
        "out_of_order": sum(r["out_of_order"] for r in rounds),
        "server_cpu": median([r["server_cpu"] for r in rounds]),
        "fleet_cpu": median([r["fleet_cpu"] for r in rounds]),
        "closes": sum(sum(r["close_codes"].values()) for r in rounds),
        "close_codes": sorted({code for r in rounds for code in r["close_codes"]}),
        "other": sorted({kind for r in rounds for kind in r["other"]}),
    }


def main() -> None:
    args = parse_args()
    kinds = pick_servers([kind.strip() for kind in args.servers.split(",") if kind.strip()])
    subscriber_counts = [int(n) for n in args.subscribers.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    results: dict[tuple[str, int, float], list[dict[str, Any]]] = defaultdict(list)
    started = time.monotonic()
    print(f"Benchmark 1: publish-to-receipt latency. {machine_line()}", flush=True)
    with bench_run(args.redis_url) as run:
        stack = run.start(kinds, args.publisher, deflate=args.deflate)
        servers, loadgen, fleet = stack.servers, stack.loadgen, stack.fleet
        print(
            f"publisher: {loadgen.mode}; {args.rounds} round(s); cells of {args.duration:g} s "
            f"or {args.min_entries} entries, whichever is longer",
            flush=True,
        )
        for round_index in range(args.rounds):
            for subscribers in subscriber_counts:
                for rate in rates:
                    shift = round_index % len(kinds)
                    for kind in kinds[shift:] + kinds[:shift]:
                        result = run_cell(run, servers[kind], fleet, loadgen, subscribers, rate, args)
                        results[kind, subscribers, rate].append(result)
                        print(
                            f"  round {round_index + 1} {kind:>12} {subscribers:>5} subs {rate:>5g}/s: "
                            f"p50 {fmt_ms(result['p50_ms'])} p99 {fmt_ms(result['p99_ms'])} ms, "
                            f"{result['expected'] - result['missing']}/{result['expected']}",
                            flush=True,
                        )
    print_tables(kinds, subscriber_counts, rates, results, args, time.monotonic() - started, run.load_report)


def print_tables(
    kinds: list[str],
    subscriber_counts: list[int],
    rates: list[float],
    results: dict[tuple[str, int, float], list[dict[str, Any]]],
    args: argparse.Namespace,
    elapsed: float,
    load_report: str,
) -> None:
    rows = []
    checks = []
    for subscribers in subscriber_counts:
        for rate in rates:
            summaries = {kind: summarize(results[kind, subscribers, rate]) for kind in kinds}
            floor = summaries.get("floor")
            for kind in kinds:
                s = summaries[kind]
                rows.append(
                    [
                        subscribers,
                        f"{rate:g}",
                        SERVER_LABELS[kind],
                        fmt_ms(s["p50"]),
                        fmt_ms(s["p99"]),
                        fmt_ms(s["max"]),
                        f"{s['received_unique']}/{s['expected']}",
                        s["duplicates"],
                        f"{s['server_cpu']:.0f}",
                        f"{s['fleet_cpu']:.0f}",
                        ", ".join(s["close_codes"] + s["other"]) or "-",
                    ]
                )
            if "ours" in summaries and floor is not None:
                ours = summaries["ours"]
                p50_ratio = ours["p50"] / floor["p50"] if floor["p50"] else float("inf")
                p99_ratio = ours["p99"] / floor["p99"] if floor["p99"] else float("inf")
                complete = ours["received_unique"] == ours["expected"] and not ours["duplicates"]
                met = p50_ratio <= 1.5 and p99_ratio <= 1.5 and complete
                verdict = "met" if met else "MISSED"
                if floor["received_unique"] < floor["expected"]:
                    verdict += " (overload: the floor itself fell behind)"
                checks.append(
                    [
                        subscribers,
                        f"{rate:g}",
                        ratio(ours["p50"], floor["p50"]),
                        ratio(ours["p99"], floor["p99"]),
                        "yes"
                        if complete
                        else f"no ({ours['expected'] - ours['received_unique']} missing, {ours['duplicates']} dup)",
                        verdict,
                    ]
                )
    print()
    print(f"Latency from write to receipt, ms (median over {args.rounds} round(s); delivered summed over rounds)")
    print()
    headers = [
        "subs",
        "entries/s",
        "server",
        "p50",
        "p99",
        "max",
        "delivered/expected",
        "dup",
        "server CPU %",
        "fleet CPU %",
        "closes / other messages",
    ]
    print(table(headers, rows))
    if checks:
        print()
        print("Target: ours within 1.5x the floor's p50 and p99, nothing dropped or duplicated")
        print()
        print(table(["subs", "entries/s", "p50 ours/floor", "p99 ours/floor", "all delivered once", "target"], checks))
    print()
    print(f"Reproduce: {reproduce_command('benchmarks.bench_latency')}   ({elapsed:.0f} s; {load_line()})")
    print(load_report)


if __name__ == "__main__":
    main()
