"""One definition, two executions: events replayed through the online store give the features
the batch engine computes at the same time, to float tolerance (design: Principles), on both
online-store backends (SQLite and a real redis-server)."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from frame_checks import ATOL, RTOL, assert_columns_close

from features.config import DataConfig
from features.ingest.contract import CUSTOMER_ID, CUSTOMER_KEY, LINK_KEY, TS
from features.ingest.identity import resolve_identities
from features.store.batch import AS_OF, BatchEngine, to_us
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.online_store import DUPLICATE, OnlineStoreBase, customer_id_of

START = pd.Timestamp("2025-01-06", tz="UTC")
DAYS = 100
DATA = DataConfig()
FS = FeatureSet(DATA, FeatureConfig())


def contract_history(customers: int = 40, events: int = 2400, seed: int = 7) -> pd.DataFrame:
    """A random contract-like history: every configured channel and event type, amounts,
    categories (one unknown to the features), timestamps over ~100 days on a coarse grid so
    that ties happen within and across customers.

    Each person has identifiers `crm:N` and one per channel identifier type; an identifier's
    first events always carry `link_key = crm:N`, so online resolution (first come) and batch
    resolution (connected components) name every person `customer_id_of("crm:N")`."""
    rng = np.random.default_rng(seed)
    channels = DATA.channels
    types = DATA.event_types.all
    weights = np.array(
        [5.0 if t in ("sent", "open", "click", "purchase", "view") else 1.0 for t in types]
    )
    who = rng.integers(0, customers, events)
    ch = rng.integers(0, len(channels), events)
    et = rng.choice(len(types), events, p=weights / weights.sum())
    # a 4-hour grid (+0 or 7 s) over 100 days: ~2 events a distinct time -> ties within and
    # across customers, at the cut-offs too
    slot = rng.integers(0, DAYS * 6, events)
    jitter = rng.integers(0, 2, events) * 7
    ts = START + pd.to_timedelta(slot * 4, unit="h") + pd.to_timedelta(jitter, unit="s")
    cats = [*FS.config.categories, "toys", None]
    rows = []
    for i in range(events):
        c = channels[ch[i]]
        t = types[et[i]]
        amount = float(np.round(rng.gamma(2.0, 30.0), 2)) if t == "purchase" else None
        category = cats[rng.integers(0, len(cats))] if t in ("purchase", "view") else None
        rows.append(
            {
                "event_id": f"e{i:06d}",
                "ts": ts[i],
                CUSTOMER_KEY: f"{c.identifier}:{who[i]}",
                LINK_KEY: None,
                "channel": c.name,
                "event_type": t,
                "amount": amount,
                "category": category,
                "person": int(who[i]),
            }
        )
    df = pd.DataFrame(rows)
    df["ts"] = pd.to_datetime(df["ts"], utc=True).dt.as_unit("us")
    first = df.groupby(CUSTOMER_KEY)["ts"].transform("min")
    crm = "crm:" + df["person"].astype(str)
    link = (df["ts"] == first) | (rng.random(len(df)) < 0.2)
    df[LINK_KEY] = np.where(link & (df[CUSTOMER_KEY] != crm), crm, None)
    df["amount"] = df["amount"].astype("float64")
    return df.drop(columns="person")


def with_customer_id(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events with the batch identity resolution's customer_id, and the identity map."""
    mapping = resolve_identities(events[[CUSTOMER_KEY, LINK_KEY]], DATA).mapping
    ids = dict(zip(mapping["identifier"], mapping[CUSTOMER_ID], strict=True))
    out = events.assign(**{CUSTOMER_ID: events[CUSTOMER_KEY].map(ids)})
    return out, mapping


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    events, _ = with_customer_id(contract_history())
    # the generator's promise that online and batch identity agree
    persons = events[LINK_KEY].dropna().str.removeprefix("crm:")
    assert set(events[CUSTOMER_ID]) == {customer_id_of(f"crm:{p}") for p in persons.unique()}
    return events


@pytest.fixture
def con(history):
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.register("events", history)
    yield c
    c.close()


def _replay(store: OnlineStoreBase, events: pd.DataFrame, batches: int, seed: int) -> None:
    """Events in ts order, cut into batches, each batch shuffled (the store sorts it)."""
    rng = np.random.default_rng(seed)
    ordered = events.sort_values(TS, kind="stable")
    for part in np.array_split(np.arange(len(ordered)), batches):
        batch = ordered.iloc[part].drop(columns=CUSTOMER_ID, errors="ignore")
        batch = batch.iloc[rng.permutation(len(batch))]
        report = store.apply_events(batch, now=START + pd.Timedelta(days=1000))
        assert report.n_rejected == 0, report.rejected
        assert report.applied == report.received


def _compare(online: pd.DataFrame, batch: pd.DataFrame) -> None:
    assert list(online[CUSTOMER_ID]) == list(batch[CUSTOMER_ID])
    assert (online[AS_OF] == batch[AS_OF]).all()
    assert list(online.columns) == list(batch.columns)
    assert_columns_close(online, batch, FS.names)


def _cut(history: pd.DataFrame, q: float) -> pd.Timestamp:
    """An event's own timestamp (so events sit exactly at the cut-off and must be left out)."""
    ts = history[TS].sort_values(ignore_index=True)
    return ts.iloc[int(q * (len(ts) - 1))]


@pytest.mark.parametrize("q", [0.45, 1.0])
def test_streaming_replay_equals_batch_snapshot(opener, history, con, q):
    t = _cut(history, q)
    assert (history[TS] == t).sum() >= 2  # ties at the cut-off stay out
    engine = BatchEngine(FS, con)
    expected = engine.snapshot(t)
    store = opener()
    _replay(store, history[history[TS] < t], batches=7, seed=1)
    assert store.customer_ids() == sorted(expected[CUSTOMER_ID])
    online = store.read_many(list(expected[CUSTOMER_ID]), as_of_us=int(to_us(t)))
    _compare(online, expected)
    # single reads agree with the frame
    cid = expected[CUSTOMER_ID].iloc[0]
    one = store.read(cid, int(to_us(t)))
    row = online.set_index(CUSTOMER_ID).loc[cid, FS.names].to_numpy(np.float64)
    np.testing.assert_allclose(
        [one[n] for n in FS.names], row, rtol=RTOL, atol=ATOL, equal_nan=True
    )
    # replaying everything again changes nothing: every event is a duplicate
    again = store.apply_events(history[history[TS] < t].drop(columns=CUSTOMER_ID))
    assert again.applied == 0 and set(again.rejected["reason"]) == {DUPLICATE}
    _compare(store.read_many(list(expected[CUSTOMER_ID]), int(to_us(t))), expected)


def test_one_state_read_at_two_times(opener, history, con):
    """State streamed to t1, read at t1 and again 3 days later (decay, sliding windows and days
    since move on without events): the batch at both times on the history before t1."""
    t1 = _cut(history, 0.6)
    store = opener()
    _replay(store, history[history[TS] < t1], batches=3, seed=2)
    con.register("events_t1", history[history[TS] < t1])
    engine = BatchEngine(FS, con, events="events_t1")
    for t in (t1, t1 + pd.Timedelta(days=3)):
        expected = engine.snapshot(t)
        _compare(store.read_many(list(expected[CUSTOMER_ID]), int(to_us(t))), expected)


def test_materialize_then_stream_equals_batch(opener, history, con):
    t1, t2 = _cut(history, 0.5), _cut(history, 0.85)
    _, mapping = with_customer_id(history.drop(columns=CUSTOMER_ID))
    con.register("identity", mapping)
    people = history[CUSTOMER_ID].drop_duplicates().sort_values(ignore_index=True)
    customers = pd.DataFrame(
        {
            CUSTOMER_ID: people.iloc[::2],
            CUSTOMER_KEY: "crm:x",
            "age": np.arange(len(people))[::2] + 20,
            "region": [["north", "south", "west"][i % 3] for i in range(len(people[::2]))],
        }
    )
    con.register("customers", customers)
    store = opener()
    n = store.materialize(con, t1, chunk_rows=7)  # tiny chunks exercise the chunking
    assert n == history.loc[history[TS] < t1, CUSTOMER_ID].nunique()
    assert store.watermark_us == to_us(t1)
    # the stream replays from before t1: what the materialisation holds is a duplicate
    window = history[history[TS] < t2]
    before = window[window[TS] < t1]
    _replay_expecting(store, before, applied=0)
    _replay_expecting(store, window[window[TS] >= t1], applied=int((window[TS] >= t1).sum()))
    expected = BatchEngine(FS, con, customers="customers").snapshot(t2)
    online = store.read_many(list(expected[CUSTOMER_ID]), int(to_us(t2)))
    _compare(online, expected)
    for col in ("profile_age", "profile_region"):
        pd.testing.assert_series_equal(
            online[col].astype(object).where(online[col].notna(), None),
            expected[col].astype(object).where(expected[col].notna(), None),
            check_names=False,
            check_index=False,
        )
    # materialised at t1 and read at t1: the batch snapshot as of t1
    store2 = opener("online2")
    store2.materialize(con, t1)
    expected = BatchEngine(FS, con, customers="customers").snapshot(t1)
    _compare(store2.read_many(list(expected[CUSTOMER_ID]), int(to_us(t1))), expected)


def _replay_expecting(store: OnlineStoreBase, events: pd.DataFrame, applied: int) -> None:
    total = 0
    ordered = events.sort_values(TS, kind="stable").drop(columns=CUSTOMER_ID)
    for part in np.array_split(np.arange(len(ordered)), 4):
        report = store.apply_events(ordered.iloc[part], now=START + pd.Timedelta(days=1000))
        assert set(report.rejected["reason"]) <= {DUPLICATE}
        total += report.applied
    assert total == applied


@pytest.fixture(scope="module")
def synth_world(tmp_path_factory):
    """A 300-person synthetic world, ingested: events, customers and identity as in production."""
    from features.ingest.contract import DataDir
    from features.ingest.event_store import ingest
    from features.synthetic.world import generate_world

    root = tmp_path_factory.mktemp("synth") / "world"
    generate_world(root, customers=300, days=120, seed=3, workers=1, progress=False)
    ingest(DataDir(root), DATA, progress=False)
    return DataDir(root)


def test_synthetic_world_replay_equals_batch(opener, synth_world):
    """The ingested store's events replayed online (identity and profiles materialised first,
    so both sides name customers alike) give the batch snapshot with profiles."""
    from features.ingest.event_store import open_store

    con = open_store(synth_world)
    try:
        history = con.sql("SELECT * FROM events ORDER BY ts, event_id").df()
        start = history[TS].min()
        t = _cut(history, 0.8)
        store = opener()
        assert store.materialize(con, start) == 0  # identity map and profiles, no events yet
        assert store.profile_names
        _replay(store, history[history[TS] < t], batches=5, seed=3)
        expected = BatchEngine(FS, con, customers="customers").snapshot(t)
        online = store.read_many(list(expected[CUSTOMER_ID]), int(to_us(t)))
        assert store.customer_ids() == sorted(expected[CUSTOMER_ID])
        _compare(online, expected)
        for col in store.profile_names:
            left = online[col].astype(object).where(online[col].notna(), None)
            right = expected[col].astype(object).where(expected[col].notna(), None)
            assert [str(v) for v in left] == [str(v) for v in right], col
    finally:
        con.close()
