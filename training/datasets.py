"""Point-in-time training sets: features strictly before the decision time, labels after it.

* contacts: one row per outbound contact or holdout; features as of the contact's timestamp (as
  a live decision would have seen them); labels: responded on the contact's channel within
  (t, t + attribution window], purchased and spend within (t, t + purchase horizon].
* snapshots: one row per customer per snapshot time t; labels from (t, t + purchase horizon].

Rows whose label window runs past the end of the data are dropped (their labels are censored)
and counted in the returned report.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from features.config import DataConfig
from features.errors import UserError
from features.ingest.contract import (
    ACTION_ID,
    AMOUNT,
    CHANNEL,
    CUSTOMER_ID,
    EVENT_ID,
    EVENT_TYPE,
    PROPENSITY,
    TS,
)
from features.store.batch import AS_OF, BatchEngine, to_us
from features.store.definitions import US_PER_DAY
from training.config import LabelConfig

TREATED = "treated"
RESPONDED = "responded"
PURCHASED = "purchased"
SPEND = "spend"
LABELS = [RESPONDED, PURCHASED, SPEND]
WRITE_ROWS = 500_000  # rows of a training set converted to Arrow at a time when writing parquet


@dataclass(frozen=True)
class TrainingSetReport:
    rows: int
    dropped_censored: int
    first_as_of: pd.Timestamp | None
    last_as_of: pd.Timestamp | None
    data_end: pd.Timestamp
    # complete contacts the row budget left without features: id, time, channel, action,
    # treated and labels only, for estimates that need no features (each action's mean effect)
    unfeatured: pd.DataFrame | None = None


def data_end(con: duckdb.DuckDBPyConnection) -> pd.Timestamp:
    """The time just after the last event: no label window may reach beyond it."""
    first, last = event_time_range(con)
    return last + pd.Timedelta(microseconds=1)


def event_time_range(con: duckdb.DuckDBPyConnection) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last event time of the store (UTC)."""
    first, last = con.execute(
        f"SELECT epoch_us(min({TS})), epoch_us(max({TS})) FROM events"
    ).fetchall()[0]
    if last is None:
        raise UserError(
            "the event store holds no events: run `nba ingest` on a data directory "
            "whose events pass validation"
        )
    return pd.Timestamp(first, unit="us", tz="UTC"), pd.Timestamp(last, unit="us", tz="UTC")


def _window_us(days: float) -> int:
    return int(round(days * US_PER_DAY))


def contact_labels(
    con: duckdb.DuckDBPyConnection, data: DataConfig, labels: LabelConfig
) -> pd.DataFrame:
    """Outbound contacts and holdouts with their labels (no features), in event order."""
    whens = " ".join(f"WHEN '{c.name}' THEN '{c.response}'" for c in data.channels if c.response)
    # no channel with a response (a purchase-only log): no contact can be responded to
    response_type = f"CASE {CHANNEL} {whens} ELSE NULL END" if whens else "NULL::VARCHAR"
    outbound = ", ".join(f"'{t}'" for t in data.event_types.outbound)
    purchase = ", ".join(f"'{t}'" for t in data.event_types.purchase)
    treated = data.event_types.outbound[0]
    a_us, h_us = (
        _window_us(labels.attribution_window_days),
        _window_us(labels.purchase_horizon_days),
    )
    sql = f"""
    WITH c AS (
        SELECT {EVENT_ID}, {CUSTOMER_ID}, {TS}, epoch_us({TS}) AS t_us, {CHANNEL}, {ACTION_ID},
               {PROPENSITY}, {EVENT_TYPE} = '{treated}' AS {TREATED},
               {response_type} AS response_type
        FROM events WHERE {EVENT_TYPE} IN ({outbound})
    ),
    e AS (SELECT {CUSTOMER_ID}, epoch_us({TS}) AS e_us, {CHANNEL}, {EVENT_TYPE}, {AMOUNT}
          FROM events)
    SELECT c.{EVENT_ID}, c.{CUSTOMER_ID}, c.{TS}, c.{CHANNEL}, c.{ACTION_ID}, c.{PROPENSITY},
           c.{TREATED},
           coalesce(bool_or(e.{EVENT_TYPE} = c.response_type AND e.{CHANNEL} = c.{CHANNEL}
                            AND e.e_us <= c.t_us + {a_us}), false) AS {RESPONDED},
           coalesce(bool_or(e.{EVENT_TYPE} IN ({purchase})), false) AS {PURCHASED},
           coalesce(sum(CASE WHEN e.{EVENT_TYPE} IN ({purchase}) THEN e.{AMOUNT} END), 0.0)
               AS {SPEND}
    FROM c LEFT JOIN e
      ON e.{CUSTOMER_ID} = c.{CUSTOMER_ID} AND e.e_us > c.t_us AND e.e_us <= c.t_us + {h_us}
    GROUP BY ALL
    ORDER BY c.{TS}, c.{EVENT_ID}
    """
    return con.sql(sql).df()


def contact_training_set(
    con: duckdb.DuckDBPyConnection,
    engine: BatchEngine,
    data: DataConfig,
    labels: LabelConfig,
    since: pd.Timestamp | None = None,
    max_rows: int | None = None,
) -> tuple[pd.DataFrame, TrainingSetReport]:
    """One row per outbound contact or holdout: ids, treatment, propensity, labels, features.

    `max_rows` bounds the rows (the features are the costly part): the most recent complete
    contacts of each action, shared out equally (`most_recent_per_action`).
    """
    if labels.attribution_window_days > labels.purchase_horizon_days:
        raise ValueError("training.labels: attribution window must not exceed purchase horizon")
    end = data_end(con)
    rows = contact_labels(con, data, labels)
    rows[TS] = pd.to_datetime(rows[TS], utc=True)
    horizon = pd.Timedelta(days=labels.purchase_horizon_days)
    wanted = rows[TS] >= since if since is not None else pd.Series(True, index=rows.index)
    complete = rows[TS] + horizon < end
    dropped = int((wanted & ~complete).sum())
    rows = rows[wanted & complete].reset_index(drop=True)
    unfeatured = None
    if max_rows is not None and len(rows) > max_rows:
        kept = most_recent_per_action(rows, max_rows)
        unfeatured = rows.loc[~kept, [EVENT_ID, TS, CHANNEL, ACTION_ID, TREATED, *LABELS]]
        rows = rows[kept].reset_index(drop=True)
    feats = engine.at(rows.rename(columns={TS: AS_OF})[[CUSTOMER_ID, AS_OF]])
    out = pd.concat([rows, feats], axis=1)
    report = TrainingSetReport(
        rows=len(out),
        dropped_censored=dropped,
        first_as_of=rows[TS].min() if len(rows) else None,
        last_as_of=rows[TS].max() if len(rows) else None,
        data_end=end,
        unfeatured=None if unfeatured is None else unfeatured.reset_index(drop=True),
    )
    return out, report


def most_recent_per_action(rows: pd.DataFrame, max_rows: int) -> np.ndarray:
    """Which of the time-ordered contacts to keep (a boolean mask), at most `max_rows`: each
    action's most recent ones, the budget shared equally between actions, and what an action
    with fewer rows leaves shared among the others (rows without an action count under their
    channel).

    The most recent rows overall would be the latest few weeks, which can miss an action run a
    few times a year (direct mail) entirely; and a rare action's effect, estimated from its own
    holdouts, gains most from each row it keeps.
    """
    key = rows[ACTION_ID].astype(object).fillna(rows[CHANNEL].astype(object))
    sizes = np.sort(key.value_counts().to_numpy())
    budget, quota = max_rows, int(sizes[-1])
    for i, n in enumerate(sizes):  # water-filling: the smallest groups first
        share = budget // (len(sizes) - i)
        if n > share:
            quota = share
            break
        budget -= int(n)
    newest_first = rows.groupby(key.to_numpy(), sort=False).cumcount(ascending=False)
    return newest_first.to_numpy() < quota


def snapshot_times(con: duckdb.DuckDBPyConnection, labels: LabelConfig) -> list[pd.Timestamp]:
    """Midnight snapshots every `snapshot_every_days`, the last one whose horizon fits the data."""
    end = data_end(con)
    last = (end - pd.Timedelta(days=labels.purchase_horizon_days)).floor("D")
    start, _ = event_time_range(con)
    times = []
    t = last
    while t > start and len(times) < labels.max_snapshots:
        times.append(t)
        t -= pd.Timedelta(days=labels.snapshot_every_days)
    return sorted(times)


MIN_SNAPSHOTS = 3  # a time split needs train, calibration and test snapshots


def longest_horizon_days(con: duckdb.DuckDBPyConnection, labels: LabelConfig) -> int:
    """The longest whole-day purchase horizon that still leaves MIN_SNAPSHOTS snapshots with
    a complete label window in the history (0 if none does): what to set when the configured
    horizon is as long as the history."""
    start, _ = event_time_range(con)
    end = data_end(con)
    every = pd.Timedelta(days=labels.snapshot_every_days)
    for days in range((end - start).days, 0, -1):
        last = (end - pd.Timedelta(days=days)).floor("D")
        if last - (MIN_SNAPSHOTS - 1) * every > start:
            return days
    return 0


def horizon_problem(con: duckdb.DuckDBPyConnection, labels: LabelConfig, found: int) -> str:
    """Why `found` snapshots (fewer than MIN_SNAPSHOTS) have a complete purchase horizon, and
    the longest horizon this history allows."""
    start, _ = event_time_range(con)
    end = data_end(con)
    longest = longest_horizon_days(con, labels)
    history = (end - start) / pd.Timedelta(days=1)
    fix = (
        f"the longest this history allows is {longest} days: set "
        f"training.labels.purchase_horizon_days to at most {longest}"
        if longest
        else "the history is too short for any horizon: lengthen it"
    )
    return (
        f"{found} snapshot(s) with a complete {labels.purchase_horizon_days:g}-day purchase "
        f"horizon in {history:.0f} days of history ({start:%Y-%m-%d} to {end:%Y-%m-%d}), "
        f"{MIN_SNAPSHOTS} needed at training.labels.snapshot_every_days "
        f"{labels.snapshot_every_days}; {fix}"
    )


def snapshot_labels(
    con: duckdb.DuckDBPyConnection, data: DataConfig, as_of: pd.Timestamp, horizon_days: float
) -> pd.DataFrame:
    """Per customer: purchased and spend within (as_of, as_of + horizon]."""
    purchase = ", ".join(f"'{t}'" for t in data.event_types.purchase)
    t_us = to_us(as_of)
    h_us = _window_us(horizon_days)
    return con.sql(
        f"""SELECT {CUSTOMER_ID}, true AS {PURCHASED}, sum(coalesce({AMOUNT}, 0.0)) AS {SPEND}
            FROM events WHERE {EVENT_TYPE} IN ({purchase})
              AND epoch_us({TS}) > {t_us} AND epoch_us({TS}) <= {t_us + h_us}
            GROUP BY {CUSTOMER_ID}"""
    ).df()


def iter_snapshot_training_set(
    con: duckdb.DuckDBPyConnection,
    engine: BatchEngine,
    data: DataConfig,
    labels: LabelConfig,
    times: list[pd.Timestamp],
) -> Iterator[pd.DataFrame]:
    """Per snapshot time whose horizon fits the data: customer_id, as_of, labels, features."""
    end = data_end(con)
    horizon = pd.Timedelta(days=labels.purchase_horizon_days)
    for t in times:
        if t + horizon >= end:
            continue
        f = engine.snapshot(t)
        lab = snapshot_labels(con, data, t, labels.purchase_horizon_days)
        # labels joined as two new columns: a merge would copy every feature column
        lab = lab.set_index(CUSTOMER_ID).reindex(f[CUSTOMER_ID].to_numpy())
        f[PURCHASED] = lab[PURCHASED].notna().to_numpy()  # a row exists only for buyers
        f[SPEND] = lab[SPEND].fillna(0.0).to_numpy(dtype=float)
        del lab
        yield f
        del f  # this snapshot is freed before the next one is computed


def _append_parquet(
    writer: pq.ParquetWriter | None, out: Path, frame: pd.DataFrame
) -> pq.ParquetWriter | None:
    """Append `frame` to the parquet file (opened on the first rows), converted to Arrow a
    slice at a time so that only a slice is ever held twice."""
    for start in range(0, len(frame), WRITE_ROWS):
        table = pa.Table.from_pandas(frame.iloc[start : start + WRITE_ROWS], preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(out, table.schema, compression="zstd")
        writer.write_table(table.cast(writer.schema))
    return writer


def snapshot_training_set(
    con: duckdb.DuckDBPyConnection,
    engine: BatchEngine,
    data: DataConfig,
    labels: LabelConfig,
    times: list[pd.Timestamp] | None = None,
    out: Path | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame | None, TrainingSetReport]:
    """One row per customer per snapshot: customer_id, as_of, purchased, spend, features.

    With `out`, each snapshot is appended to that parquet file as it is computed and nothing is
    returned, so a year of monthly snapshots for millions of customers fits in memory.
    """
    end = data_end(con)
    times = times if times is not None else snapshot_times(con, labels)
    horizon = pd.Timedelta(days=labels.purchase_horizon_days)
    kept = [t for t in times if t + horizon < end]
    frames: list[pd.DataFrame] = []
    rows = 0
    writer: pq.ParquetWriter | None = None
    # a bar updated by hand: tqdm wrapping the generator would hold the previous snapshot
    # (gigabytes at a million customers) while the next one is computed
    bar = tqdm(total=len(kept), desc="snapshots", disable=not progress)
    for frame in iter_snapshot_training_set(con, engine, data, labels, kept):
        bar.update(1)
        rows += len(frame)
        if out is None:
            frames.append(frame)
            continue
        writer = _append_parquet(writer, out, frame)
        frame = None  # freed before the next snapshot is computed
    bar.close()
    if writer is not None:
        writer.close()
    report = TrainingSetReport(
        rows=rows,
        dropped_censored=len(times) - len(kept),
        first_as_of=min(kept) if kept else None,
        last_as_of=max(kept) if kept else None,
        data_end=end,
    )
    if out is not None:
        return None, report
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), report


def label_rate(frame: pd.DataFrame, column: str) -> float:
    return float(np.mean(frame[column])) if len(frame) else float("nan")
