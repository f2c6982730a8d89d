"""The world a benchmark measures: an existing data directory, or a freshly generated one."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from features.config import DataConfig
from features.ingest.contract import DataDir
from features.ingest.event_store import ingest, store_is_current


def prepared_world(data: Path | None, customers: int, seed: int = 0) -> DataDir:
    """`data` if given, else a new synthetic world of `customers`; ingested if its store is stale."""
    if data is None:
        from features.synthetic.world import generate_world

        data = Path(tempfile.mkdtemp(prefix="nba-bench-")) / "world"
        print(f"generating {customers:,} customers into {data}")
        generate_world(data, customers=customers, seed=seed, progress=True)
    data_dir = DataDir(data)
    if not store_is_current(data_dir):
        t0 = time.perf_counter()
        ingest(data_dir, DataConfig())
        print(f"ingest: {time.perf_counter() - t0:.1f} s")
    return data_dir
