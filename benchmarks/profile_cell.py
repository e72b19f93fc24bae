"""Where a web process spends its time in one benchmark cell: py-spy samples it while the cell runs.

One server (default: ours), N subscribers on one operation, entries at a fixed rate; prints the cell's latency and
the functions with the most samples (inclusive, then self). Needs py-spy (``pip install py-spy``; pass its path with
``--py-spy`` if it is not on PATH). A diagnostic, not part of the benchmark tables.

    .venv/bin/python -m benchmarks.profile_cell --server ours --subscribers 100 --rate 200
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks._children import SERVER_KINDS
from benchmarks._probes import CpuMeter
from benchmarks._report import fmt_ms, table
from benchmarks._run import bench_run
from devtools.processes import OwnedProcess

FRAME_LINE = re.compile(r":\d+\)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="ours", choices=SERVER_KINDS)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200, help="entries per second")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--publisher", default="auto", choices=["auto", "report_progress", "script"])
    parser.add_argument("--redis-url", default=None)
    return parser.parse_args()


def summarize(raw: Path, top: int) -> str:
    """Inclusive and self sample shares per function from py-spy's collapsed-stack output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [FRAME_LINE.sub(")", frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    if not total:
        return "no samples (is py-spy allowed to attach? run as root or with CAP_SYS_PTRACE)"
    parts = [f"{total} busy samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        rows = [[f"{100 * n / total:.1f}", frame] for frame, n in counter.most_common(top)]
        parts += ["", table([f"% {title}", "function (file)"], rows)]
    return "\n".join(parts)


def main() -> None:
    args = parse_args()
    with bench_run(args.redis_url) as run:
        stack = run.start([args.server], args.publisher)
        server, loadgen, fleet = stack.servers[args.server], stack.loadgen, stack.fleet
        op = run.op("profile", args.server)
        fleet.connect(server.url, [op], args.subscribers)
        raw = Path(tempfile.mkdtemp(prefix="cpws-profile-")) / "stacks.txt"
        command = [args.py_spy, "record", "--pid", str(server.pid), "--duration", str(int(args.duration))]
        command += ["--rate", "250", "--format", "raw", "--output", str(raw), "--nonblocking"]
        spy = OwnedProcess(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            meter = CpuMeter(server.pid).start()
            loadgen.start([op], args.rate, args.duration)
            done = loadgen.finish(args.duration)
            result = fleet.collect({op: done["published"][op]}, 10)
            (server_cpu,) = meter.stop()
            spy.wait_exit(args.duration + 30)
        finally:
            spy.stop(5)
            fleet.close_all()
    print(
        f"\n{args.server}, {args.subscribers} subscribers, {args.rate:g} entries/s: p50 {fmt_ms(result['p50_ms'])} "
        f"p99 {fmt_ms(result['p99_ms'])} ms, {result['expected'] - result['missing']}/{result['expected']} "
        f"delivered, server CPU {server_cpu:.0f} %\n"
    )
    print(summarize(raw, args.top) if raw.exists() else f"py-spy wrote nothing ({' '.join(command)})")
    print(run.load_report)


if __name__ == "__main__":
    main()
