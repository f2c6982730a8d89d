"""One feature definition, two SQL engines: Spark computes exactly DuckDB's features.

A small random history (every configured channel and event type, null amounts, unknown and null
categories, timestamp ties, an event exactly at the cut-off) goes through `BatchEngine` (DuckDB)
and `SparkEngine` (local Spark); snapshots and query points must agree.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from frame_checks import ATOL, RTOL

from features.config import DataConfig
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
)
from features.store.batch import AS_OF, BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet

pytestmark = [
    pytest.mark.integration,
    # pyspark 4.x warns that it does not fully support pandas 3 yet; the parity is the check
    pytest.mark.filterwarnings("ignore::FutureWarning:pyspark"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.filterwarnings("ignore:Series.values returning an ndarray that drops timezone"),
]

START = pd.Timestamp("2024-01-01", tz="UTC")
CUT_1 = pd.Timestamp("2024-03-01 12:34:56.789012", tz="UTC")
CUT_2 = pd.Timestamp("2024-04-20 08:00:00", tz="UTC")
ONE_US = pd.Timedelta(microseconds=1)


def _history(fs: FeatureSet, seed: int = 11) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    channels = fs.data.channel_names
    types = fs.data.event_types.all
    categories = [*fs.config.categories, "garden", None]  # configured, unknown, null
    span_us = int((CUT_2 - START) / pd.Timedelta(microseconds=1)) + 86_400_000_000
    rows = []
    for c in range(7):
        n = int(rng.integers(30, 90))
        offsets = rng.integers(0, span_us, size=n)
        offsets[: n // 5] = offsets[0]  # ties: several events at one instant
        for off in offsets:
            et = str(rng.choice(types))
            amount = float(np.round(rng.gamma(2.0, 30.0), 2)) if et == "purchase" else None
            if et == "purchase" and rng.random() < 0.2:
                amount = None
            rows.append(
                {
                    "cid": f"c{c}",
                    "ts": START + pd.Timedelta(microseconds=int(off)),
                    CHANNEL: str(rng.choice(channels)),
                    EVENT_TYPE: et,
                    AMOUNT: amount,
                    CATEGORY: categories[int(rng.integers(len(categories)))],
                }
            )
    # every channel with every event type at least once
    for i, (ch, et) in enumerate((ch, et) for ch in channels for et in types):
        rows.append(
            {
                "cid": f"c{i % 7}",
                "ts": START + pd.Timedelta(hours=7 * i + 3),
                CHANNEL: ch,
                EVENT_TYPE: et,
                AMOUNT: 12.5 if et == "purchase" else None,
                CATEGORY: fs.config.categories[i % len(fs.config.categories)],
            }
        )
    # exactly at the cut-off: excluded as of CUT_1, included after it
    rows.append(
        {
            "cid": "c1",
            "ts": CUT_1,
            CHANNEL: "store",
            EVENT_TYPE: "purchase",
            AMOUNT: 99.0,
            CATEGORY: "home",
        }
    )
    # a customer whose first event is the cut-off: absent from the CUT_1 snapshot
    rows.append(
        {
            "cid": "c_late",
            "ts": CUT_1,
            CHANNEL: "email",
            EVENT_TYPE: "sent",
            AMOUNT: None,
            CATEGORY: None,
        }
    )
    events = pd.DataFrame(rows).sort_values(["cid", "ts"], kind="stable", ignore_index=True)
    events[EVENT_ID] = [f"e{i}" for i in range(len(events))]
    events[CUSTOMER_KEY] = "crm:" + events["cid"]
    events[CUSTOMER_ID] = events["cid"]
    events = events.drop(columns="cid").assign(
        **{LINK_KEY: None, ACTION_ID: None, PROPENSITY: None}
    )
    customers = pd.DataFrame(
        {
            CUSTOMER_ID: [f"c{c}" for c in range(6)],  # c6 and c_late have no profile
            CUSTOMER_KEY: [f"crm:c{c}" for c in range(6)],
            "age": [31, 45, 27, 60, 38, 52],
            "segment": ["a", "b", "a", None, "c", "b"],
        }
    )
    return events, customers


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return FeatureSet(DataConfig(), FeatureConfig())


@pytest.fixture(scope="module")
def store(tmp_path_factory, fs):
    root = tmp_path_factory.mktemp("store")
    events, customers = _history(fs)
    schema = EVENT_SCHEMA.append(pa.field(CUSTOMER_ID, pa.string()))
    table = pa.table(
        [pa.array(events[f.name].tolist(), f.type, from_pandas=True) for f in schema], schema=schema
    )
    pq.write_table(table, root / "events.parquet")
    pq.write_table(
        pa.Table.from_pandas(customers, preserve_index=False), root / "customers.parquet"
    )
    return root, events


@pytest.fixture(scope="module")
def spark():
    from features.store.spark_engine import local_spark

    # no skip: a machine without Java 17+ fails here with local_spark's message
    # Tuned for a few tiny queries: compiling code for ~250 aggregates costs more than it saves,
    # so expressions are interpreted (Spark's own tests run this mode) and the JIT stays at C1.
    session = local_spark(
        "nba-parity-test",
        shuffle_partitions=2,
        conf={
            "spark.driver.extraJavaOptions": "-Duser.timezone=UTC -XX:TieredStopAtLevel=1",
            "spark.sql.codegen.wholeStage": "false",
            "spark.sql.codegen.factoryMode": "NO_CODEGEN",
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def engines(store, spark, fs):
    from features.store.spark_engine import SparkEngine, load_events

    root, _ = store
    con = duckdb.connect()
    con.sql(f"CREATE VIEW events AS SELECT * FROM read_parquet('{root / 'events.parquet'}')")
    con.sql(f"CREATE VIEW customers AS SELECT * FROM read_parquet('{root / 'customers.parquet'}')")
    load_events(spark, root / "events.parquet", view="events")
    spark.read.parquet(str(root / "customers.parquet")).createOrReplaceTempView("customers")
    yield BatchEngine(fs, con, customers="customers"), SparkEngine(fs, spark, customers="customers")
    con.close()


def _assert_same(duck: pd.DataFrame, spark: pd.DataFrame, numeric: list[str]) -> None:
    assert list(spark.columns) == list(duck.columns)
    assert len(spark) == len(duck)
    assert spark.index.equals(duck.index)
    np.testing.assert_allclose(
        spark[numeric].to_numpy(dtype=np.float64),
        duck[numeric].to_numpy(dtype=np.float64),
        rtol=RTOL,
        atol=ATOL,
        equal_nan=True,
    )
    other = [c for c in duck.columns if c not in numeric]
    pd.testing.assert_frame_equal(spark[other], duck[other], check_dtype=False)


@pytest.mark.parametrize("as_of", [CUT_1, CUT_2], ids=["at_an_event", "later"])
def test_snapshot_parity(engines, fs, as_of):
    duck_engine, spark_engine = engines
    duck, sp = duck_engine.snapshot(as_of), spark_engine.snapshot(as_of)
    _assert_same(duck, sp, fs.names)
    assert (duck[AS_OF] == as_of).all()
    # the event exactly at the cut-off is not seen as of the cut-off
    assert ("c_late" in set(sp[CUSTOMER_ID])) == (as_of > CUT_1)
    assert sp["profile_age"].notna().any() and sp["profile_age"].isna().any()


def test_base_snapshot_parity(engines, fs):
    duck_engine, spark_engine = engines
    duck = duck_engine.base_snapshot(CUT_1).sort_values(CUSTOMER_ID, ignore_index=True)
    sp = spark_engine.base_snapshot(CUT_1).sort_values(CUSTOMER_ID, ignore_index=True)
    _assert_same(duck, sp, fs.base_names)


def test_query_point_parity(engines, store, fs):
    duck_engine, spark_engine = engines
    _, events = store
    rng = np.random.default_rng(3)
    picks = events.sample(25, random_state=5)
    queries = pd.concat(
        [
            # at an event's own time (it is excluded), and just after it (included)
            picks[[CUSTOMER_ID, TS]].rename(columns={TS: AS_OF}),
            picks[[CUSTOMER_ID]].assign(**{AS_OF: picks[TS] + ONE_US}),
            pd.DataFrame(
                {
                    CUSTOMER_ID: ["c2", "c_late", "nobody", "c0", "c0", "c1", "c1"],
                    # no history, unknown customer, a repeated point, the cut-off event
                    AS_OF: [START, CUT_1, CUT_2, CUT_1, CUT_1, CUT_1, CUT_1 + ONE_US],
                }
            ),
            pd.DataFrame(
                {
                    CUSTOMER_ID: rng.choice([f"c{c}" for c in range(7)], 10),
                    AS_OF: START + pd.to_timedelta(rng.integers(0, 110 * 86400, 10), unit="s"),
                }
            ),
        ],
        ignore_index=True,
    )
    queries.index = pd.RangeIndex(100, 100 + len(queries))  # the result keeps the caller's index
    duck, sp = duck_engine.at(queries), spark_engine.at(queries)
    _assert_same(duck, sp, fs.names)
    assert sp.loc[queries.index[queries[CUSTOMER_ID] == "nobody"], "all_purchase_count"].eq(0).all()
    # c1's purchase exactly at CUT_1 counts only after it
    c1 = queries[CUSTOMER_ID] == "c1"
    at_cut = sp.loc[c1 & (queries[AS_OF] == CUT_1), "all_purchase_count"].unique()
    after_cut = sp.loc[c1 & (queries[AS_OF] == CUT_1 + ONE_US), "all_purchase_count"].unique()
    assert len(at_cut) == 1 and list(after_cut) == [at_cut[0] + 1]


def test_distributed_frames_match(engines, spark, fs):
    duck_engine, spark_engine = engines
    duck = duck_engine.snapshot(CUT_2).drop(columns=["profile_age", "profile_segment"])
    sp = spark_engine.snapshot_df(CUT_2).toPandas().sort_values(CUSTOMER_ID, ignore_index=True)
    sp[AS_OF] = pd.to_datetime(sp[AS_OF]).dt.tz_localize("UTC")
    duck[AS_OF] = duck[AS_OF].dt.as_unit("us")
    sp[AS_OF] = sp[AS_OF].dt.as_unit("us")
    _assert_same(duck, sp, fs.names)

    queries = pd.DataFrame(
        {
            CUSTOMER_ID: ["c0", "c3", "c5", "nobody"],
            AS_OF: [CUT_1, CUT_2, START + pd.Timedelta(days=20), CUT_1],
        }
    )
    q = spark.createDataFrame(queries.assign(query_id=["q0", "q1", "q2", "q3"]))
    out = spark_engine.at_df(q).toPandas().sort_values("query_id", ignore_index=True)
    ref = duck_engine.at(queries)
    np.testing.assert_allclose(
        out[fs.names].to_numpy(dtype=np.float64),
        ref[fs.names].to_numpy(dtype=np.float64),
        rtol=RTOL,
        atol=ATOL,
        equal_nan=True,
    )
    assert list(out[CUSTOMER_ID]) == list(queries[CUSTOMER_ID])
