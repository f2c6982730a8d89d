"""Batch feature engine speed against a plain DuckDB GROUP BY baseline over the same parquet.

    python -m benchmarks.features --data DIR            # an existing world (ingested if needed)
    python -m benchmarks.features --customers 1000000   # generates one first

Prints: events, baseline seconds, feature-build seconds and events/second, the ratio
feature-build / baseline (goal <= 3), peak memory (goal < 8 GB), and the time and memory of a
training set of 12 monthly snapshots written to parquet.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import psutil

from benchmarks.peak_memory import PeakMemory
from benchmarks.world import prepared_world
from features.config import DataConfig
from features.ingest.event_store import open_store
from features.store.batch import BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from training.config import LabelConfig
from training.datasets import data_end, snapshot_times, snapshot_training_set


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="data directory of a world")
    parser.add_argument(
        "--customers", type=int, default=100_000, help="world size if --data is absent"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snapshots", type=int, default=12, help="snapshots in the training set")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of baseline then feature build"
    )
    parser.add_argument(
        "--partition-events",
        type=int,
        default=FeatureConfig().snapshot_partition_events,
        help="events per customer_id range of a snapshot scan (FeatureConfig default)",
    )
    args = parser.parse_args()

    data_dir = prepared_world(args.data, args.customers, args.seed)
    con = open_store(data_dir)
    events_path = data_dir.store / "events.parquet"
    n_events = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    n_customers = con.execute("SELECT count(DISTINCT customer_id) FROM events").fetchall()[0][0]
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    print(f"events: {n_events:,}  customers: {n_customers:,}  duckdb threads: {threads}")

    fs = FeatureSet(DataConfig(), FeatureConfig(snapshot_partition_events=args.partition_events))
    engine = BatchEngine(fs, con, customers="customers")
    as_of = data_end(con)
    print(f"snapshot ranges of {args.partition_events:,} events")
    rss_before_gb = psutil.Process().memory_info().rss / 1e9
    # Rounds of one baseline query then one feature build, so both see the same spell of this
    # shared machine; the ratio of the bests and the median of the rounds' ratios are printed.
    baseline: list[float] = []
    build: list[float] = []
    peak_gb = 0.0
    n_customers_out = 0
    for _ in range(args.repeats):
        # Its own connection, closed after: its buffers are not the feature build's memory.
        with duckdb.connect() as base_con:
            t0 = time.perf_counter()
            base_con.sql(
                f"SELECT customer_id, channel, count(*) AS n, sum(amount) AS spend "
                f"FROM read_parquet('{events_path}') GROUP BY ALL"
            ).to_arrow_table()  # columnar, as the feature build's result: no Python tuples
            baseline.append(time.perf_counter() - t0)
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            table = engine.snapshot(as_of)
            build.append(time.perf_counter() - t0)
        n_customers_out = len(table)
        del table  # the peak is one build's, not the last result's plus the next build's
        peak_gb = max(peak_gb, mem.peak_gb)
    base_s, feat_s = min(baseline), min(build)
    ratios = sorted(f / b for f, b in zip(build, baseline, strict=True))
    print(
        f"baseline GROUP BY customer, channel count+sum: {base_s:.2f} s "
        f"(rounds: {', '.join(f'{x:.2f}' for x in baseline)})"
    )
    print(
        f"features: {n_customers_out:,} customers x {len(fs.names)} features in {feat_s:.2f} s "
        f"({n_events / feat_s / 1e6:.2f} M events/s), peak memory {peak_gb:.2f} GB "
        f"(process held {rss_before_gb:.2f} GB before the first build; "
        f"rounds: {', '.join(f'{x:.2f}' for x in build)})"
    )
    print(
        f"ratio features / baseline: {feat_s / base_s:.2f} best against best, "
        f"{statistics.median(ratios):.2f} median of the rounds' ratios "
        f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f}; goal <= 3)"
    )

    labels = LabelConfig(max_snapshots=args.snapshots)
    times = snapshot_times(con, labels)
    out = Path(tempfile.mkdtemp(prefix="nba-bench-")) / "snapshots.parquet"
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        _, report = snapshot_training_set(
            con, engine, DataConfig(), labels, times, out=out, progress=True
        )
        snap_s = time.perf_counter() - t0
    print(
        f"training set: {len(times)} snapshots, {report.rows:,} rows in {snap_s:.1f} s, "
        f"peak memory {mem.peak_gb:.2f} GB, {out.stat().st_size / 1e9:.2f} GB parquet"
    )


if __name__ == "__main__":
    main()
