"""The closed loop: decisions written back as `sent`/`holdout` events, with their full record.

Two files per run: `events/decisions-<run>.parquet`, contract events the next `nba ingest` picks
up (event_id = decision id, so logging the same run twice is one set of events), and
`decisions/<run>.parquet`, every decision (do-nothing included) with its scores, propensities,
reasons and model and policy versions, which off-policy evaluation reads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.ingest.contract import (
    ACTION_ID,
    AMOUNT,
    CATEGORY,
    CHANNEL,
    CUSTOMER_ID,
    CUSTOMER_KEY,
    EVENT_ID,
    EVENT_SCHEMA,
    EVENT_TYPE,
    LINK_KEY,
    PROPENSITY,
    TS,
    DataDir,
)
from features.store.batch import AS_OF

DECISIONS_DIR = "decisions"


def canonical_keys(con: duckdb.DuckDBPyConnection, customer_ids: pd.Series) -> pd.Series:
    """One identifier per customer: the smallest, the one identity resolution names it by."""
    con.register("_nba_ids", pd.DataFrame({CUSTOMER_ID: customer_ids.unique()}))
    try:
        keys = con.sql(
            f"SELECT i.{CUSTOMER_ID}, min(i.identifier) AS {CUSTOMER_KEY} "
            f"FROM identity i JOIN _nba_ids q USING ({CUSTOMER_ID}) GROUP BY ALL"
        ).df()
    finally:
        con.unregister("_nba_ids")
    return customer_ids.map(keys.set_index(CUSTOMER_ID)[CUSTOMER_KEY])


def send_times(as_of: pd.Series, send_hour: pd.Series) -> pd.Series:
    """The first time at `send_hour` (UTC) at or after the decision time."""
    as_of = pd.to_datetime(as_of, utc=True)
    at_hour = as_of.dt.floor("D") + pd.to_timedelta(send_hour.clip(lower=0), unit="h")
    return at_hour.where(at_hour >= as_of, at_hour + pd.Timedelta(days=1))


def decision_events(table: pd.DataFrame, keys: pd.Series) -> pd.DataFrame:
    """Contract events for the decisions that chose an action (sent or held out)."""
    acted = table["logged_as"].isin(["sent", "holdout"]).to_numpy()
    rows = table[acted]
    missing = keys[acted].isna().to_numpy()
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} decisions name customers without an identifier in the store, "
            f"e.g. {rows[CUSTOMER_ID].iloc[int(np.argmax(missing))]}"
        )
    n = len(rows)
    return pd.DataFrame(
        {
            EVENT_ID: rows["decision_id"].to_numpy(),
            TS: send_times(rows[AS_OF], rows["send_hour"]).to_numpy(),
            CUSTOMER_KEY: keys[acted].to_numpy(),
            LINK_KEY: pd.Series([None] * n, dtype="string").to_numpy(),
            CHANNEL: rows["channel"].to_numpy(),
            EVENT_TYPE: rows["logged_as"].to_numpy(),
            ACTION_ID: rows["action_id"].to_numpy(),
            AMOUNT: np.full(n, np.nan),
            CATEGORY: pd.Series([None] * n, dtype="string").to_numpy(),
            PROPENSITY: rows["logged_propensity"].to_numpy(),
        }
    )


def write_decision_log(
    table: pd.DataFrame, data_dir: DataDir, con: duckdb.DuckDBPyConnection
) -> tuple[Path, Path]:
    """Write a run's full decision record, then its events (for the next ingest), each under a
    temporary name renamed when complete: a run killed half-way leaves no truncated file for
    ingest to read, and its rerun (the same run id) rewrites both."""
    from serving.campaign_job import write_atomically

    run = str(table["decision_id"].iloc[0]).rsplit("-", 1)[0]
    keys = canonical_keys(con, table[CUSTOMER_ID])
    events = decision_events(table, keys)
    record_path = data_dir.root / DECISIONS_DIR / f"{run}.parquet"
    write_atomically(record_path, lambda p: table.to_parquet(p, index=False))
    arrow = pa.Table.from_pandas(events, schema=EVENT_SCHEMA, preserve_index=False)
    events_path = data_dir.root / "events" / f"decisions-{run}.parquet"  # beside a single file too
    write_atomically(events_path, lambda p: pq.write_table(arrow, p))
    return events_path, record_path


class RealtimeDecisionLog:
    """Real-time decisions appended as JSON lines to `decisions/realtime-<day>.jsonl`: the
    same record as a batch run's `decisions/<run>.parquet` (ids, scores, propensities, reasons,
    versions), one line a decision, read with `read_realtime_decisions`. Thread-safe."""

    def __init__(self, data_dir: DataDir) -> None:
        self.directory = data_dir.root / DECISIONS_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._day = ""
        self._file: TextIO | None = None

    def append(self, record: dict[str, object]) -> None:
        line = json.dumps(record, default=str, allow_nan=True) + "\n"
        day = datetime.now(UTC).strftime("%Y%m%d")
        with self._lock:
            if day != self._day or self._file is None:
                if self._file is not None:
                    self._file.close()
                self._file = (self.directory / f"realtime-{day}.jsonl").open("a", buffering=1)
                self._day = day
            self._file.write(line)

    def close(self) -> None:
        with self.closed():
            pass

    @contextmanager
    def closed(self) -> Iterator[None]:
        """The log closed and held: no decision is written until the block ends (an erasure
        rewrites its files meanwhile; the next decision opens the new file)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            yield


def read_realtime_decisions(data_dir: DataDir) -> pd.DataFrame:
    """Every real-time decision record logged under `decisions/`, oldest file first."""
    files = sorted((data_dir.root / DECISIONS_DIR).glob("realtime-*.jsonl"))
    frames = [pd.read_json(f, lines=True, dtype=False) for f in files if f.stat().st_size]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
