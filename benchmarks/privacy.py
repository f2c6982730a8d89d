"""What privacy by design costs: `nba ingest` of a world whose e-mails and phones arrive in clear
(hashed with HMAC-SHA256 in DuckDB) against the same world with pseudonymous ids (nothing to
hash), measured in the same run; then one `nba forget` on the clear world.

    python -m benchmarks.privacy [--customers 20000] [--days 365]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

from features.config import DataConfig
from features.ingest.contract import DataDir
from features.ingest.event_store import ingest
from features.ingest.privacy import SECRET_VARIABLE
from features.synthetic.world import generate_world

SECRET = "benchmark-secret-0123456789abcdef"


def clear_copy(src: Path, dst: Path) -> int:
    """A copy of the world with every e-mail `email:<id>@example.com` and phone `+44 <digits>`
    in clear (events' keys and links, the customers' keys); returns the events rewritten."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("store", "quarantine"))
    con = duckdb.connect()

    def clear(col: str) -> str:
        return (
            f"CASE WHEN {col} LIKE 'email:%' THEN {col} || '@example.com' "
            f"WHEN {col} LIKE 'phone:%' THEN 'phone:+44 ' || "
            f"lpad(CAST(hash({col}) % 10000000000 AS VARCHAR), 10, '0') ELSE {col} END"
        )

    def rewrite(part: Path, cols: tuple[str, ...]) -> None:
        tmp = part.with_suffix(".tmp")
        replace = ", ".join(f"{clear(c)} AS {c}" for c in cols)
        con.execute(
            f"COPY (SELECT * REPLACE ({replace}) FROM read_parquet('{part}')) TO '{tmp}' "
            "(FORMAT parquet)"
        )
        os.replace(tmp, part)

    n = 0
    for part in sorted((dst / "events").glob("*.parquet")):
        rewrite(part, ("customer_key", "link_key"))
        n += con.execute(f"SELECT count(*) FROM read_parquet('{part}')").fetchone()[0]
    for part in sorted((dst / "customers").glob("*.parquet")):
        rewrite(part, ("customer_key",))
    return int(n)


def timed_ingest(data: Path) -> float:
    t0 = time.perf_counter()
    ingest(DataDir(data), DataConfig(), progress=False)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=2, help="best of this many ingests")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nba-privacy-"))
    try:
        base = root / "pseudonymous"
        generate_world(base, customers=args.customers, days=args.days, seed=1, progress=False)
        events = clear_copy(base, root / "clear")
        os.environ.pop(SECRET_VARIABLE, None)
        plain = min(timed_ingest(base) for _ in range(args.repeat))
        os.environ[SECRET_VARIABLE] = SECRET
        hashed = min(timed_ingest(root / "clear") for _ in range(args.repeat))
        print(f"{events:,} events, {args.customers:,} customers")
        print(f"ingest, pseudonymous ids (baseline): {plain:6.2f} s")
        print(f"ingest, clear e-mails and phones hashed: {hashed:6.2f} s  ({hashed / plain:.2f}x)")
        from serving.erasure import forget

        con = duckdb.connect()
        (key,) = con.execute(
            f"SELECT customer_key FROM read_parquet('{root}/clear/events/*.parquet') "
            "WHERE customer_key LIKE 'email:%@example.com' LIMIT 1"
        ).fetchone()
        t0 = time.perf_counter()
        report = forget(DataDir(root / "clear"), key, DataConfig())
        erase = time.perf_counter() - t0
        rows = sum(report.rows_removed.values())
        print(
            f"forget one person (no online store): {erase:6.2f} s  ({erase / hashed:.2f}x an "
            f"ingest): {rows:,} rows from {len(report.rows_removed)} files, store rebuilt"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
