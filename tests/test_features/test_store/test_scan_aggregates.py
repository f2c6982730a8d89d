"""The DuckDB snapshot's one-scan compiled reduction gives the SQL definition's numbers, whole or
a customer_id range at a time, on sorted and unsorted event relations."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from frame_checks import ATOL, RTOL, assert_columns_close

from features.config import DataConfig
from features.ingest.contract import (
    AMOUNT,
    CATEGORY,
    CHANNEL,
    CODED_COLUMNS,
    CUSTOMER_ID,
    CUSTOMER_INDEX,
    CUSTOMER_NO,
    EVENT_TYPE,
    EVENT_VOCABULARY,
    STORE_EVENTS_VARIABLE,
    TS,
)
from features.ingest.event_store import StoreFile
from features.store.batch import DUCKDB, BatchEngine, FeatureEngine, base_aggregates_sql, to_us
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.scan_aggregates import partition_bounds

START = pd.Timestamp("2024-01-01", tz="UTC")
CUTS = [
    pd.Timestamp("2024-02-10 06:00:00", tz="UTC"),  # an hour boundary, with an event on it
    pd.Timestamp("2024-03-17 13:45:12.345678", tz="UTC"),
    pd.Timestamp("2024-06-01", tz="UTC"),  # after every event
]


def _fs(partition_events: int) -> FeatureSet:
    return FeatureSet(DataConfig(), FeatureConfig(snapshot_partition_events=partition_events))


def _history(fs: FeatureSet, customers: int = 60, seed: int = 5) -> pd.DataFrame:
    """Random events of every channel and type: null amounts, unknown and null categories,
    timestamp ties and events exactly at a cut-off; in no particular order."""
    rng = np.random.default_rng(seed)
    channels, types = fs.data.channel_names, fs.data.event_types.all
    categories = [*fs.config.categories, "garden", None]
    n = customers * 40
    span_us = int((CUTS[-1] - START) / pd.Timedelta(microseconds=1))
    ts = START + pd.to_timedelta(rng.integers(0, span_us, size=n), unit="us")
    ts = ts.to_numpy()
    ts[::9] = ts[1::9][: len(ts[::9])]  # ties
    ts[:5] = CUTS[0].to_datetime64()  # at a cut-off: left out of that snapshot
    event_type = rng.choice(types, size=n)
    amount = np.where(event_type == "purchase", np.round(rng.gamma(2.0, 30.0, size=n), 2), np.nan)
    amount[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            CUSTOMER_ID: [f"c{i:03d}" for i in rng.integers(0, customers, size=n)],
            TS: pd.to_datetime(ts, utc=True),
            CHANNEL: rng.choice(channels, size=n),
            EVENT_TYPE: event_type,
            AMOUNT: amount,
            CATEGORY: [categories[i] for i in rng.integers(0, len(categories), size=n)],
        }
    )


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return _history(_fs(10**9))


def _connect(kind: str, events: pd.DataFrame, folder) -> duckdb.DuckDBPyConnection:
    """A connection with `events`: the frame as it is, a parquet file sorted like the store
    (small row groups, so a customer range can skip some), or that file with the store's
    integer customer_no and its `customer_index` (which also numbers a customer without events)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if kind == "unsorted frame":
        con.register("events", events)
        return con
    path = folder / "events.parquet"
    ordered = events.sort_values([CUSTOMER_ID, TS], ignore_index=True)
    if kind == "numbered store":
        ids = sorted({*ordered[CUSTOMER_ID], "c0000"})  # c0000 has no events
        index = pd.DataFrame({CUSTOMER_NO: np.arange(len(ids), dtype=np.uint32), CUSTOMER_ID: ids})
        ordered[CUSTOMER_NO] = ordered[CUSTOMER_ID].map(index.set_index(CUSTOMER_ID)[CUSTOMER_NO])
        con.register(CUSTOMER_INDEX, index)
        # the store's codes: positions among its sorted values, plus one the plan does not know
        vocabulary = []
        for field, coded in CODED_COLUMNS.items():
            values = sorted({*ordered[field].dropna(), f"zz_unknown_{field}"})
            codes = {v: i for i, v in enumerate(values, start=1)}
            ordered[coded] = ordered[field].map(codes).fillna(0).astype(np.uint16)
            vocabulary += [(field, code, value) for value, code in codes.items()]
        con.register(EVENT_VOCABULARY, pd.DataFrame(vocabulary, columns=["field", "code", "value"]))
        con.execute(f"SET VARIABLE {STORE_EVENTS_VARIABLE} = '{path}'")
    pq.write_table(pa.Table.from_pandas(ordered, preserve_index=False), path, row_group_size=97)
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{path}')")
    return con


@pytest.fixture(scope="module", params=["unsorted frame", "sorted parquet", "numbered store"])
def con(request, events, tmp_path_factory):
    con = _connect(request.param, events, tmp_path_factory.mktemp("scan"))
    yield con
    con.close()


def test_the_store_file_is_read_by_row_groups(con, request):
    numbered_store = request.node.callspec.params["con"] == "numbered store"
    assert (StoreFile.of(con, "events") is not None) == numbered_store
    assert StoreFile.of(con, "some_other_view") is None


def _sql_base(con: duckdb.DuckDBPyConnection, fs: FeatureSet, t: pd.Timestamp) -> pd.DataFrame:
    sql = base_aggregates_sql(fs, "events", DUCKDB, as_of_us=int(to_us(t)))
    return con.sql(sql).df().sort_values(CUSTOMER_ID, ignore_index=True)


@pytest.mark.parametrize("partition_events", [10**9, 500, 37])
@pytest.mark.parametrize("t", CUTS)
def test_scan_equals_sql(con, t, partition_events):
    fs = _fs(partition_events)
    expected = _sql_base(con, fs, t)
    got = BatchEngine(fs, con).base_snapshot(t)
    assert list(got[CUSTOMER_ID]) == list(expected[CUSTOMER_ID])
    assert list(got.columns) == [CUSTOMER_ID, *fs.base_names]
    assert_columns_close(got, expected, fs.base_names)


class _SqlEngine(BatchEngine):
    """The engine as it was: base aggregates from the SQL, the shared pandas snapshot."""

    def base_snapshot(self, as_of: pd.Timestamp) -> pd.DataFrame:
        return _sql_base(self.con, self.fs, as_of)

    snapshot = FeatureEngine.snapshot


def test_partitioned_snapshot_equals_whole_and_sql(con):
    t = CUTS[1]
    profiles = pd.DataFrame({CUSTOMER_ID: ["c001", "c007", "nobody"], "age": [30, 41, 50]})
    con.register("customers", profiles)
    whole = BatchEngine(_fs(10**9), con, customers="customers").snapshot(t)
    parts = BatchEngine(_fs(50), con, customers="customers").snapshot(t)
    sql = _SqlEngine(_fs(10**9), con, customers="customers").snapshot(t)
    for other in (parts, sql):
        pd.testing.assert_frame_equal(other, whole, rtol=RTOL, atol=ATOL)
    assert whole[CUSTOMER_ID].is_monotonic_increasing
    assert whole["profile_age"].notna().sum() == 2


def test_partition_bounds_split_customers_evenly(con, events):
    bounds = partition_bounds(con, "events", len(events) // 4)
    assert bounds[0][0] is None and bounds[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    ids = events[CUSTOMER_ID].to_numpy()
    sizes = []
    for lo, hi in bounds:
        inside = np.ones(len(ids), dtype=bool)
        if lo is not None:
            inside &= ids >= lo
        if hi is not None:
            inside &= ids < hi
        sizes.append(int(inside.sum()))
    assert len(bounds) >= 3 and sum(sizes) == len(ids)
    assert max(sizes) < len(ids) / 2


def test_store_ranges_cover_every_customer_number_once(events, tmp_path):
    con = _connect("numbered store", events, tmp_path)
    store = StoreFile.of(con, "events")
    bounds = store.ranges(len(events) // 4)
    n_customers = events[CUSTOMER_ID].nunique() + 1
    assert store.n_customers == n_customers
    assert bounds[0][0] == 0 and bounds[-1][1] == n_customers and len(bounds) >= 3
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    # a range's row groups hold all of its customers' events (and at most a few neighbours')
    number = {cid: n for n, cid in enumerate(store.customer_ids.to_pylist())}
    event_numbers = events[CUSTOMER_ID].map(number).to_numpy()
    for lo, hi in bounds:
        read = store.read(lo, hi, [CUSTOMER_NO]).column(0).to_numpy()
        in_range = ((read >= lo) & (read < hi)).sum()
        assert in_range == ((event_numbers >= lo) & (event_numbers < hi)).sum()


def test_no_events_before_the_cut_off(con):
    fs = _fs(10**9)
    early = START - pd.Timedelta(days=1)
    assert len(BatchEngine(fs, con).base_snapshot(early)) == 0
    snap = BatchEngine(fs, con).snapshot(early)
    assert len(snap) == 0 and list(snap.columns)[2:] == fs.names


def test_partition_events_is_configurable():
    cfg = FeatureConfig(snapshot_partition_events=123)
    assert cfg.snapshot_partition_events == 123
    with pytest.raises(ValueError):
        FeatureConfig(snapshot_partition_events=0)


def test_customer_index_of_sorted_runs_handed_over_out_of_order():
    # a parallel scan of the sorted store may return its row groups in any order; a customer
    # at a row-group boundary then appears in two runs
    from features.store.scan_aggregates import _customer_index

    ids = pa.chunked_array([["c", "d", "d"], ["a", "b", "c"], ["d", "e"]])
    index, distinct = _customer_index(ids)
    assert distinct.to_pylist() == ["a", "b", "c", "d", "e"]
    assert index.tolist() == [2, 3, 3, 0, 1, 2, 3, 4]
    index, distinct = _customer_index(pa.chunked_array([["a", "a", "b"], ["b", "c"]]))
    assert (distinct.to_pylist(), index.tolist()) == (["a", "b", "c"], [0, 0, 1, 1, 2])
