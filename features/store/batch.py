"""Batch engine: point-in-time base aggregates in SQL, for DuckDB (embedded) or Spark (scale-out).

The SQL is generated from `FeatureSet.base`, so both engines run one definition. A feature as of
time t uses only events with ts < t. Two shapes of query:

* a snapshot: every customer as of one time t (one scan of the events, no join);
* query points: arbitrary (customer_id, as_of) rows, e.g. one per outbound contact, joined to the
  customer's earlier events (the cost is the customer's events times their query points).

On the embedded engine a snapshot does not run the SQL: `features.store.scan_aggregates` computes
the same base aggregates from one projection scan reduced by a compiled loop, a customer range at
a time (many times faster, and memory bounded by a range plus the result); the event store's
file is read by pyarrow row group by row group, any other relation scanned by DuckDB. A test
holds both to the SQL's numbers.
"""

from __future__ import annotations

import ctypes
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from features.ingest.contract import AMOUNT, CATEGORY, CHANNEL, CUSTOMER_ID, EVENT_TYPE, TS
from features.ingest.event_store import StoreFile
from features.store.definitions import US_PER_DAY, BaseAggregate, FeatureSet, profile_columns
from features.store.scan_aggregates import Partition, ScanPlan, scan_partitions

AS_OF_US = "as_of_us"
QUERY_ID = "query_id"
AS_OF = "as_of"
_EPOCH = pd.Timestamp(0, tz="UTC")

# level-1 measures: (name, SQL over the event alias `e` and the as-of expression, level-2 reducer)
_REDUCER = {
    "decayed_count": "SUM",
    "decayed_amount": "SUM",
    "count": "SUM",
    "amount": "SUM",
    "window_count": "SUM",
    "last": "MAX",
    "first": "MIN",
}


@dataclass(frozen=True)
class Dialect:
    """The few places where DuckDB and Spark SQL differ."""

    name: str
    epoch_us_template: str

    def epoch_us(self, column: str) -> str:
        return self.epoch_us_template.format(column)


DUCKDB = Dialect("duckdb", "epoch_us({})")
SPARK = Dialect("spark", "unix_micros({})")


def _weight(b: BaseAggregate) -> str:
    """Name of the per-row decay weight exp(-lambda * age) of a decayed aggregate's half-life."""
    return "w_" + f"{b.param:g}".replace(".", "_")


def _measure(b: BaseAggregate) -> tuple[str, str]:
    """The level-1 column a base aggregate reduces, and its SQL over the prepared rows `r`."""
    if b.op == "decayed_count":
        return f"m_dc_{_weight(b)}", f"SUM(r.{_weight(b)})"
    if b.op == "decayed_amount":
        return f"m_da_{_weight(b)}", f"SUM(r.amt * r.{_weight(b)})"
    if b.op == "count":
        return "m_n", "COUNT(*)"
    if b.op == "amount":
        return "m_a", "SUM(r.amt)"
    if b.op == "last":
        return "m_last", "MAX(r.ts_us)"
    if b.op == "first":
        return "m_first", "MIN(r.ts_us)"
    if b.op == "window_count":
        # window [as_of - w, as_of): inclusive start, exclusive end like every feature
        w_us = int(round(float(b.param) * US_PER_DAY))
        return (
            f"m_w_{b.param:g}".replace(".", "_"),
            f"SUM(CASE WHEN r.ts_us >= r.as_of_us - {w_us} THEN 1 ELSE 0 END)",
        )
    raise ValueError(f"unknown aggregate operation {b.op}")


def _dim_expr(dim: str | None) -> str | None:
    if dim is None:
        return None
    if dim == "hour":
        return "CAST(FLOOR(e.ts_us / 3600000000.0) AS BIGINT) % 24"
    if dim == "dow":
        # 1970-01-01 was a Thursday: (days since epoch + 3) mod 7 gives Monday = 0
        return "(CAST(FLOOR(e.ts_us / 86400000000.0) AS BIGINT) + 3) % 7"
    if dim == "category":
        return "e.category"
    raise ValueError(f"unknown feature dimension {dim}")


def _quote(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _in_list(values: Iterable[str | int]) -> str:
    return "(" + ", ".join(_quote(v) for v in values) + ")"


def base_aggregates_sql(
    fs: FeatureSet,
    events: str,
    dialect: Dialect,
    *,
    queries: str | None = None,
    as_of_us: int | None = None,
) -> str:
    """SQL returning one row per query (or per customer of a snapshot) with every base aggregate.

    `events` names a relation with the contract's columns plus `customer_id`. Give either
    `queries`, a relation (query_id, customer_id, as_of_us), or `as_of_us` for a snapshot of every
    customer with an event before it (keyed by customer_id).
    """
    if (queries is None) == (as_of_us is None):
        raise ValueError("give exactly one of queries and as_of_us")
    key = QUERY_ID if queries is not None else CUSTOMER_ID
    as_of = "q.as_of_us" if queries is not None else str(int(as_of_us))
    source = (
        f"SELECT {CUSTOMER_ID}, {dialect.epoch_us(TS)} AS ts_us, {CHANNEL} AS channel, "
        f"{EVENT_TYPE} AS event_type, {AMOUNT} AS amount, {CATEGORY} AS category FROM {events}"
    )
    if queries is not None:
        join = (
            f"FROM ({source}) e JOIN {queries} q "
            f"ON e.{CUSTOMER_ID} = q.{CUSTOMER_ID} AND e.ts_us < q.as_of_us"
        )
        key_expr = f"q.{QUERY_ID}"
    else:
        join = f"FROM ({source}) e"
        key_expr = f"e.{CUSTOMER_ID}"

    groups: dict[str | None, list[BaseAggregate]] = {}
    for b in fs.base:
        groups.setdefault(b.dim, []).append(b)

    ctes: list[str] = []
    for gi, (dim, aggs) in enumerate(groups.items()):
        measures = dict(_measure(b) for b in aggs)
        types = sorted({t for b in aggs for t in b.event_types})
        # decay weights once per row, shared by the count and amount aggregates of a half-life
        weights = {
            _weight(b): f"EXP(-{b.decay_rate_per_us!r} * ({as_of} - e.ts_us))"
            for b in aggs
            if b.op in ("decayed_count", "decayed_amount")
        }
        dim_sql = _dim_expr(dim)
        # a dimension group whose aggregates all share one filter needs no channel/type keys
        by_dim_only = dim is not None and len({(b.channels, b.event_types) for b in aggs}) == 1
        row_cols = [f"{key_expr} AS k"]
        keys = ["r.k"]
        if not by_dim_only:
            row_cols += ["e.channel AS channel", "e.event_type AS event_type"]
            keys += ["r.channel", "r.event_type"]
        if dim_sql is not None:
            row_cols.append(f"{dim_sql} AS dim")
            keys.append("r.dim")
        row_cols += [
            "e.ts_us AS ts_us",
            "COALESCE(e.amount, 0.0) AS amt",
            f"{as_of} AS as_of_us",
            *(f"{sql} AS {name}" for name, sql in weights.items()),
        ]
        where = [f"e.event_type IN {_in_list(types)}"]
        if queries is None:
            where.append(f"e.ts_us < {as_of}")
        rows = f"SELECT {', '.join(row_cols)} {join} WHERE {' AND '.join(where)}"
        out_keys = [k.removeprefix("r.") for k in keys]
        ctes.append(
            f"l1_{gi} AS (SELECT {', '.join(f'{k} AS {o}' for k, o in zip(keys, out_keys, strict=True))}, "
            + ", ".join(f"{sql} AS {name}" for name, sql in measures.items())
            + f" FROM ({rows}) r GROUP BY {', '.join(keys)})"
        )
        cols = []
        for b in aggs:
            cond = []
            if not by_dim_only:
                cond.append(f"event_type IN {_in_list(b.event_types)}")
                if b.channels is not None:
                    cond.append(f"channel IN {_in_list(b.channels)}")
            if dim is not None:
                cond.append(f"dim = {_quote(b.dim_value)}")
            mname, _ = _measure(b)
            cols.append(
                f"{_REDUCER[b.op]}(CASE WHEN {' AND '.join(cond)} THEN {mname} END) AS {b.name}"
            )
        ctes.append(f"l2_{gi} AS (SELECT k, {', '.join(cols)} FROM l1_{gi} GROUP BY k)")

    if queries is not None:
        keys_cte = f"keys AS (SELECT {QUERY_ID} AS k FROM {queries})"
    else:
        # every customer with an event before as_of has a row in some group (all types are used)
        keys_cte = (
            "keys AS ("
            + " UNION ".join(f"SELECT k FROM l2_{gi}" for gi in range(len(groups)))
            + ")"
        )
    ctes.append(keys_cte)
    select_cols = ", ".join(
        f"l2_{gi}.{b.name}" for gi, aggs in enumerate(groups.values()) for b in aggs
    )
    joins = " ".join(f"LEFT JOIN l2_{gi} ON l2_{gi}.k = keys.k" for gi in range(len(groups)))
    return f"WITH {', '.join(ctes)} SELECT keys.k AS {key}, {select_cols} FROM keys {joins}"


def to_us(ts: pd.Series | pd.Timestamp | np.ndarray) -> np.ndarray | int:
    """Microseconds since the epoch of UTC timestamps."""
    if isinstance(ts, pd.Timestamp):
        t = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return (t - _EPOCH) // pd.Timedelta(microseconds=1)
    s = pd.to_datetime(pd.Series(ts), utc=True).dt.as_unit("us")
    return s.astype("int64").to_numpy()


class FeatureEngine(ABC):
    """The pandas face shared by the DuckDB and Spark engines: profile join and derivation.

    Subclasses compute the base aggregates (`base_snapshot`, `base_at`) and read `profile_table`.
    """

    fs: FeatureSet
    _profile: pd.DataFrame | None = None

    @abstractmethod
    def base_snapshot(self, as_of: pd.Timestamp) -> pd.DataFrame:
        """Base aggregates of every customer with an event before `as_of`, keyed by customer_id."""

    @abstractmethod
    def base_at(self, queries: pd.DataFrame) -> pd.DataFrame:
        """Base aggregates for query points (query_id, customer_id, as_of_us), keyed by query_id."""

    @abstractmethod
    def profile_table(self) -> pd.DataFrame | None:
        """The customers table as a frame, or None without one."""

    def profile(self) -> pd.DataFrame | None:
        """Profile columns of the customers table by customer_id (read once), if there is one."""
        if self._profile is None:
            table = self.profile_table()
            if table is None:
                return None
            self._profile = profile_columns(table, self.fs.config.profile_columns)
        return self._profile

    def _with_profile(self, feats: pd.DataFrame, customer_ids: np.ndarray) -> pd.DataFrame:
        profile = self.profile()
        if profile is None:
            return feats
        joined = profile.reindex(pd.Index(customer_ids, name=CUSTOMER_ID))
        joined.index = feats.index
        return pd.concat([feats, joined], axis=1)

    def snapshot(self, as_of: pd.Timestamp) -> pd.DataFrame:
        """Features of every customer active before `as_of`: customer_id, as_of, features."""
        base = self.base_snapshot(as_of).sort_values(CUSTOMER_ID, ignore_index=True)
        as_of_us = np.full(len(base), to_us(as_of), dtype=np.int64)
        feats = self.fs.derive_frame(base, as_of_us)
        feats.insert(0, AS_OF, pd.Timestamp(to_us(as_of), unit="us", tz="UTC"))
        feats.insert(0, CUSTOMER_ID, base[CUSTOMER_ID].to_numpy())
        return self._with_profile(feats, base[CUSTOMER_ID].to_numpy())

    def at(self, queries: pd.DataFrame) -> pd.DataFrame:
        """Features at each query point; `queries` has customer_id and as_of (UTC timestamps)."""
        q = pd.DataFrame(
            {
                QUERY_ID: np.arange(len(queries), dtype=np.int64),
                CUSTOMER_ID: queries[CUSTOMER_ID].to_numpy(),
                AS_OF_US: to_us(queries[AS_OF]),
            }
        )
        base = self.base_at(q).sort_values(QUERY_ID, ignore_index=True)
        feats = self.fs.derive_frame(base, q[AS_OF_US].to_numpy())
        feats.index = queries.index
        return self._with_profile(feats, q[CUSTOMER_ID].to_numpy())


class BatchEngine(FeatureEngine):
    """Computes feature tables on DuckDB over the event store."""

    def __init__(
        self,
        fs: FeatureSet,
        con: duckdb.DuckDBPyConnection,
        events: str = "events",
        customers: str | None = None,
    ):
        self.fs = fs
        self.con = con
        self.events = events
        self.customers = customers
        self._profile = None
        self._plan: ScanPlan | None = None
        self._profile_row_of_number: np.ndarray | None = None  # customer_no -> profile row

    def profile_table(self) -> pd.DataFrame | None:
        if self.customers is None:
            return None
        return self.con.sql(f"SELECT * FROM {self.customers}").df()

    def _partitions(self, as_of: pd.Timestamp) -> Iterator[Partition]:
        """The snapshot's base aggregates, a customer_id range at a time (in customer order)."""
        if self._plan is None:
            self._plan = ScanPlan.of(self.fs)
        return scan_partitions(
            self.con,
            self.fs,
            self.events,
            int(to_us(as_of)),
            self.fs.config.snapshot_partition_events,
            self._plan,
            self._store,
        )

    def base_snapshot(self, as_of: pd.Timestamp) -> pd.DataFrame:
        """Base aggregates of every customer with an event before `as_of`, keyed by customer_id
        (sorted); the numbers of `base_aggregates_sql` (one scan reduced in numpy)."""
        parts = list(self._partitions(as_of))
        base = np.concatenate([p.base for p in parts]) if parts else None
        frame = pd.DataFrame(base, columns=self.fs.base_names, dtype=np.float64)
        frame.insert(0, CUSTOMER_ID, _ids(parts))
        return frame

    def snapshot(self, as_of: pd.Timestamp) -> pd.DataFrame:
        """Features of every customer active before `as_of`: customer_id, as_of, features.

        Each customer range is derived as soon as it is reduced, so only one range's base
        aggregates are in memory next to the features. On the event store the features are
        derived straight into one table sized for every customer of its index, and the profile
        is joined by customer number (its row of each customer_no, looked up once).
        """
        as_of_us = int(to_us(as_of))
        n_names = len(self.fs.names)
        store = self._store
        values = np.empty((store.n_customers, n_names)) if store is not None else None
        blocks: list[np.ndarray] = []
        ids: list[pa.Array] = []
        numbers: list[np.ndarray] = []
        rows = 0
        for part in self._partitions(as_of):
            n = part.base.shape[0]
            times = np.full(n, as_of_us, dtype=np.int64)
            if values is not None:
                self.fs.derive(part.base, times, out=values[rows : rows + n])
                numbers.append(part.customer_no)
            else:
                blocks.append(self.fs.derive(part.base, times))
            ids.append(part.customer_ids)
            rows += n
            del part
        values = values[:rows] if values is not None else _stack_releasing(blocks, n_names)
        id_array = pa.chunked_array(ids) if ids else pa.chunked_array([], pa.string())
        customer_ids = id_array.to_pandas()
        frame = pd.DataFrame(values, columns=self.fs.names, copy=False)
        frame.insert(0, AS_OF, pd.Timestamp(as_of_us, unit="us", tz="UTC"))
        frame.insert(0, CUSTOMER_ID, customer_ids)
        if store is not None:
            no = np.concatenate(numbers) if numbers else np.empty(0, dtype=np.int64)
            result = self._with_profile_by_number(frame, no)
        else:
            result = self._with_profile(frame, customer_ids.to_numpy())
        del frame, values
        _return_freed_heap()  # the profile join's intermediates: gigabytes at 1M customers
        return result

    @cached_property
    def _store(self) -> StoreFile | None:
        """The event store's file behind `events` (looked up once), or None for a relation
        DuckDB scans."""
        return StoreFile.of(self.con, self.events)

    def _with_profile_by_number(self, feats: pd.DataFrame, numbers: np.ndarray) -> pd.DataFrame:
        """The profile columns joined on the store's customer numbers (rows without a profile
        get missing values, as a reindex gives them)."""
        profile = self.profile()
        if profile is None:
            return feats
        if self._profile_row_of_number is None:
            store_ids = self._store.customer_ids.to_pandas()
            self._profile_row_of_number = profile.index.get_indexer(pd.Index(store_ids))
        positions = self._profile_row_of_number[numbers]
        joined = pd.DataFrame(
            {
                c: pd.api.extensions.take(profile[c].array, positions, allow_fill=True)
                for c in profile.columns
            },
            index=feats.index,
        )
        return pd.concat([feats, joined], axis=1)

    def base_at(self, queries: pd.DataFrame) -> pd.DataFrame:
        """Base aggregates for query points (query_id, customer_id, as_of_us), keyed by query_id."""
        self.con.register("_nba_queries", queries[[QUERY_ID, CUSTOMER_ID, AS_OF_US]])
        try:
            sql = base_aggregates_sql(self.fs, self.events, DUCKDB, queries="_nba_queries")
            return self.con.sql(sql).df()
        finally:
            self.con.unregister("_nba_queries")


def _ids(parts: list[Partition]) -> np.ndarray:
    """The partitions' customer ids, concatenated, as an object array of str (like `.df()`)."""
    if not parts:
        return np.empty(0, dtype=object)
    return np.concatenate([p.ids() for p in parts])


def _stack_releasing(parts: list[np.ndarray], n_columns: int) -> np.ndarray:
    """The row blocks stacked into one array, each block released once copied, so the peak is
    the result plus one block rather than twice the result (`np.concatenate`)."""
    out = np.empty((sum(len(p) for p in parts), n_columns))
    row = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[row : row + len(part)] = part
        row += len(part)
        del part
        _return_freed_heap()
    return out


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc
        return None


_LIBC = _load_libc()


def _return_freed_heap() -> None:
    """Hand memory numpy has freed back to the operating system (glibc's `malloc_trim`).

    glibc keeps freed blocks below its mmap threshold (up to 32 MB) in its heaps for reuse, so
    the range-sized blocks a snapshot frees while stacking them would otherwise stay resident
    next to the result (measured: 1.7 GB at 1M customers). A no-op off glibc.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
