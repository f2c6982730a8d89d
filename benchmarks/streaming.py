"""Online store speed: events/second through `OnlineStore.apply_events` and single-read latency.

    python -m benchmarks.streaming                            # 20k customers x 50 events
    python -m benchmarks.streaming --customers 2000 --events-per-customer 20   # a quick look

Prints: events/second applied in batches of --batch (1,000) over the world but its latest
--single-events events, which then go one a call (half as 1-row DataFrames through
`apply_events`, half as dicts through `apply_records`); p50/p99/max latency of `read` of one
random customer (--reads, 10,000 reads), `read_many` per customer, the time to materialise
the same world from DuckDB, and the store file size. Events arrive in time order across random
customers: nearly every event of a 1,000-event batch touches another customer (the store's
worst case). The machine's load is printed first: the figures are CPU-bound.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from benchmarks.peak_memory import PeakMemory
from features.config import DataConfig
from features.ingest.contract import CUSTOMER_ID, CUSTOMER_KEY, LINK_KEY, TS
from features.ingest.identity import resolve_identities
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.online_store import OnlineStore

START = pd.Timestamp("2025-01-01", tz="UTC")


def random_world(customers: int, per_customer: int, days: int, seed: int) -> pd.DataFrame:
    """Contract-like events in ts order: every configured channel and event type, purchases
    with amounts and categories, keys by the channel's identifier type, some linked to crm."""
    rng = np.random.default_rng(seed)
    data, cfg = DataConfig(), FeatureConfig()
    n = customers * per_customer
    channels = np.array([c.name for c in data.channels])
    id_types = np.array([c.identifier for c in data.channels])
    types = np.array(data.event_types.all)
    weights = np.array([6.0 if t in ("sent", "open", "click", "view") else 1.0 for t in types])
    weights[types == "purchase"] = 3.0
    who = rng.integers(0, customers, n)
    ch = rng.integers(0, len(channels), n)
    et = rng.choice(len(types), n, p=weights / weights.sum())
    ts = START + pd.to_timedelta(np.sort(rng.integers(0, days * 86_400_000_000, n)), unit="us")
    is_purchase = types[et] == "purchase"
    cats = np.array([*cfg.categories, "other"])
    events = pd.DataFrame(
        {
            "event_id": np.char.add("e", np.arange(n).astype(str)),
            TS: ts,
            CUSTOMER_KEY: np.char.add(np.char.add(id_types[ch], ":"), who.astype(str)),
            LINK_KEY: None,
            "channel": channels[ch],
            "event_type": types[et],
            "amount": np.where(is_purchase, np.round(rng.gamma(2.0, 30.0, n), 2), np.nan),
            "category": np.where(
                is_purchase | (types[et] == "view"), cats[rng.integers(0, len(cats), n)], None
            ),
        }
    )
    events[TS] = events[TS].dt.as_unit("us")
    # an identifier's first event links it to the person's crm key, later ones now and then,
    # so online (first come) and batch resolution agree on who is who
    crm = np.char.add("crm:", who.astype(str))
    link = ~events[CUSTOMER_KEY].duplicated().to_numpy() | (rng.random(n) < 0.1)
    events[LINK_KEY] = np.where(link & (events[CUSTOMER_KEY].to_numpy() != crm), crm, None)
    return events


def percentiles(seconds: list[float]) -> str:
    us = np.array(seconds) * 1e6
    return f"p50 {np.percentile(us, 50):.0f} us, p99 {np.percentile(us, 99):.0f} us, max {us.max():.0f} us"


def bench_streaming(
    world: pd.DataFrame, fs: FeatureSet, root: Path, args: argparse.Namespace
) -> None:
    """Events/second through apply_events / apply_records, read latency, store size."""
    # the latest --single-events events are applied one by one after the rest in batches
    single = world.iloc[len(world) - args.single_events :] if args.single_events else world.iloc[:0]
    bulk = world.iloc[: len(world) - len(single)]
    path = root / "online.db"
    path.unlink(missing_ok=True)
    store = OnlineStore(path, fs)
    t0 = time.perf_counter()
    rejected = 0
    for start in range(0, len(bulk), args.batch):
        report = store.apply_events(bulk.iloc[start : start + args.batch])
        rejected += report.n_rejected
    seconds = time.perf_counter() - t0
    print(
        f"apply_events, batches of {args.batch:,}: {len(bulk):,} events in {seconds:.1f} s = "
        f"{len(bulk) / seconds:,.0f} events/s ({rejected:,} rejected); "
        f"{len(store.customer_ids()):,} online customers"
    )

    # the tail, one event a call: first half as DataFrames, second half as JSON-like records
    half = len(single) // 2
    frames = [single.iloc[i : i + 1] for i in range(half)]
    records = [
        {**r, TS: r[TS].isoformat()} for r in single.iloc[half:].astype(object).to_dict("records")
    ]
    for label, apply, items in (
        ("apply_events, batches of 1 (1-row DataFrames)", store.apply_events, frames),
        (
            "apply_records, batches of 1 (dicts with ISO-text times: POST /events)",
            store.apply_records,
            [[r] for r in records],
        ),
    ):
        if not items:
            continue
        durations, applied = [], 0
        t0 = time.perf_counter()
        for item in items:
            t1 = time.perf_counter()
            applied += apply(item).applied
            durations.append(time.perf_counter() - t1)
        seconds = time.perf_counter() - t0
        print(
            f"{label}: {len(items):,} events ({applied:,} applied) in {seconds:.1f} s = "
            f"{len(items) / seconds:,.0f} events/s, a commit each; {percentiles(durations)}"
        )

    ids = store.customer_ids()
    rng = np.random.default_rng(args.seed + 1)
    picks = [ids[i] for i in rng.integers(0, len(ids), args.reads)]
    for cid in picks[:200]:  # warm the page cache and the statement cache
        store.read(cid)
    latencies = []
    for cid in picks:
        t1 = time.perf_counter()
        store.read(cid)
        latencies.append(time.perf_counter() - t1)
    print(f"read one customer ({args.reads:,} random reads): {percentiles(latencies)}")
    t0 = time.perf_counter()
    frame = store.read_many(picks[:5_000])
    seconds = time.perf_counter() - t0
    print(
        f"read_many of {len(frame):,} customers: {seconds:.2f} s = "
        f"{seconds / max(len(frame), 1) * 1e6:.0f} us a customer"
    )
    store.close()
    size = sum(p.stat().st_size for p in root.glob("online.db*"))
    print(f"store file: {size / 1e6:,.0f} MB ({size / len(ids):,.0f} bytes a customer)")


def bench_materialize(
    world: pd.DataFrame, fs: FeatureSet, root: Path, memory_limit: str | None
) -> None:
    """Time and peak memory of materialising every customer of the world from parquet files
    (as `nba ingest` writes them) through DuckDB."""
    mapping = resolve_identities(world[[CUSTOMER_KEY, LINK_KEY]], DataConfig()).mapping
    ids_by_key = dict(zip(mapping["identifier"], mapping[CUSTOMER_ID], strict=True))
    as_of = world[TS].iloc[-1] + pd.Timedelta(microseconds=1)
    with duckdb.connect() as con:
        con.register("w", world.assign(**{CUSTOMER_ID: world[CUSTOMER_KEY].map(ids_by_key)}))
        con.register("m", mapping)
        con.execute(f"COPY w TO '{root / 'events.parquet'}' (FORMAT parquet)")
        con.execute(f"COPY m TO '{root / 'identity.parquet'}' (FORMAT parquet)")
    del mapping, ids_by_key
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    for view in ("events", "identity"):
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{root / view}.parquet')")
    path = root / "materialized.db"
    path.unlink(missing_ok=True)
    with OnlineStore(path, fs) as store, PeakMemory() as mem:
        before = mem.peak_bytes
        t0 = time.perf_counter()
        n = store.materialize(con, as_of)
        seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in root.glob("materialized.db*"))
    limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    print(
        f"materialize every customer: {n:,} customers in {seconds:.1f} s "
        f"({n / seconds:,.0f} customers/s), peak RSS +{(mem.peak_bytes - before) / 1e9:.2f} GB "
        f"over the loaded world (DuckDB memory_limit {limit}), file {size / 1e6:,.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--events-per-customer", type=int, default=50)
    parser.add_argument("--days", type=int, default=180, help="span of the history")
    parser.add_argument("--batch", type=int, default=1_000, help="events per apply_events call")
    parser.add_argument(
        "--single-events", type=int, default=5_000, help="latest events applied one a call"
    )
    parser.add_argument("--reads", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="where to write the stores (default: a temp dir)")
    parser.add_argument(
        "--only", choices=["streaming", "materialize"], help="run one of the two parts"
    )
    parser.add_argument(
        "--duckdb-memory", default="2GB", help="DuckDB memory_limit while materialising"
    )
    args = parser.parse_args()

    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    root = args.dir or Path(tempfile.mkdtemp(prefix="nba-online-"))
    root.mkdir(parents=True, exist_ok=True)
    fs = FeatureSet(DataConfig(), FeatureConfig())
    t0 = time.perf_counter()
    world = random_world(args.customers, args.events_per_customer, args.days, args.seed)
    print(
        f"world: {len(world):,} events, {args.customers:,} customers, {args.days} days, "
        f"{len(fs.base)} base aggregates -> {len(fs.names)} features "
        f"(generated in {time.perf_counter() - t0:.1f} s)"
    )
    if args.only != "materialize":
        bench_streaming(world, fs, root, args)
    if args.only != "streaming":
        bench_materialize(world, fs, root, args.duckdb_memory)


if __name__ == "__main__":
    main()
