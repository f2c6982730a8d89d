"""Speed and memory of the synthetic world generator.

    python -m benchmarks.synth                           # 100,000 and 1,000,000 customers
    python -m benchmarks.synth --customers 20000 --workers 1 --keep --out /tmp/worlds

Prints per world size: customers, events, seconds, events/second and the peak resident memory of
this process plus its worker processes (sampled; goal: 1M customers x 365 days well under
10 minutes on 2 cores and under 8 GB).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
from pathlib import Path

from benchmarks.peak_memory import PeakMemory
from features.synthetic.world import generate_world


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, help="parent folder of the worlds (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the worlds after measuring")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    parent = args.out or Path(tempfile.mkdtemp(prefix="nba-synth-bench-"))
    parent.mkdir(parents=True, exist_ok=True)
    print(
        f"{'customers':>10} {'events':>12} {'seconds':>8} {'events/s':>11} "
        f"{'peak GB':>8} {'max child GB':>13}"
    )
    for n in args.customers:
        out = parent / f"world-{n}"
        with PeakMemory() as memory:
            summary = generate_world(
                out,
                customers=n,
                days=args.days,
                seed=args.seed,
                workers=args.workers,
                progress=not args.no_progress,
            )
        # ru_maxrss is in kilobytes on Linux: the largest single worker, a check on the sampler
        child_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
        print(
            f"{summary.customers:>10,} {summary.events:>12,} {summary.seconds:>8.1f} "
            f"{summary.events / summary.seconds:>11,.0f} {memory.peak_gb:>8.2f} {child_gb:>13.2f}",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(out)
    if not args.keep and args.out is None:
        shutil.rmtree(parent)


if __name__ == "__main__":
    main()
