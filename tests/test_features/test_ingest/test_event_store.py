"""The ingest step: customer ids on every event, a reproducible store, staleness, customers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime

import pandas as pd
import pyarrow.parquet as pq
import pytest
from event_files import write_csv

from features.config import DataConfig, IdentityConfig
from features.ingest.contract import CODED_COLUMNS, EVENT_COLUMNS, EVENT_SCHEMA, DataDir
from features.ingest.event_store import STORE_FILES, ingest, open_store, store_is_current

NOW = datetime(2025, 6, 1, tzinfo=UTC)
CFG = DataConfig()


def ev(event_id: str, key: str, link: str | None = None, ts: str = "2025-03-01T10:00:00Z", **kw):
    r = {c: None for c in EVENT_COLUMNS}
    r.update(event_id=event_id, ts=ts, customer_key=key, link_key=link)
    r.update({"channel": "web", "event_type": "visit", **kw})
    return r


EVENTS = [
    ev("1", "email:a", "crm:1", ts="2025-03-02T00:00:00Z"),
    ev("2", "crm:1", ts="2025-03-01T00:00:00Z", event_type="purchase", amount="10"),
    ev("3", "email:b"),
    ev("4", "device:d", "email:b"),
    ev("5", "email:c"),
    ev("bad", "email:c", channel="fax"),
]


@pytest.fixture
def world(tmp_path) -> DataDir:
    write_csv(tmp_path / "events" / "a.csv", EVENTS[:3])
    frame = pd.DataFrame(EVENTS[3:])
    frame.to_parquet(tmp_path / "events" / "b.parquet", index=False)
    write_csv(
        tmp_path / "customers.csv",
        [
            {"customer_key": "crm:1", "segment": "gold"},
            {"customer_key": "email:a", "segment": "silver"},  # same person as crm:1
            {"customer_key": "email:b", "segment": "bronze"},
            {"customer_key": "loyalty:never", "segment": "none"},  # no events
            {"customer_key": "broken", "segment": "x"},
        ],
        ["customer_key", "segment"],
    )
    return DataDir(tmp_path)


def store_tables(dd: DataDir) -> dict[str, pd.DataFrame]:
    return {name: pq.read_table(dd.store / name).to_pandas() for name in STORE_FILES}


def test_ingest_attaches_a_customer_id_to_every_accepted_event(world):
    report = ingest(world, CFG, now=NOW, progress=False)
    assert (report.events.received, report.events.accepted, report.events.rejected) == (6, 5, 1)
    con = open_store(world)
    events = con.sql("SELECT * FROM events").df()
    assert len(events) == report.store_events == 5
    assert events["customer_id"].notna().all()
    assert list(events.columns) == [
        *EVENT_SCHEMA.names,
        "customer_id",
        "customer_no",
        *CODED_COLUMNS.values(),
    ]
    by_event = events.set_index("event_id")["customer_id"]
    assert by_event["1"] == by_event["2"]  # email:a -- crm:1
    assert by_event["3"] == by_event["4"]  # email:b -- device:d
    assert len({by_event["1"], by_event["3"], by_event["5"]}) == 3
    assert by_event["1"] == "c_" + hashlib.md5(b"crm:1").hexdigest()[:16]
    # sorted by customer_id, then time
    assert events[["customer_id", "ts"]].equals(
        events[["customer_id", "ts"]].sort_values(["customer_id", "ts"], ignore_index=True)
    )
    # customer_no is customer_id's rank, and the index maps it back
    index = con.sql("SELECT * FROM customer_index").df()
    assert list(index["customer_no"]) == list(range(3))
    assert list(index["customer_id"]) == sorted(set(events["customer_id"]))
    back = events.merge(index, on="customer_no", suffixes=("", "_indexed"))
    assert (back["customer_id"] == back["customer_id_indexed"]).all() and len(back) == 5
    # each coded column's code is the value's position among the sorted values, 0 for NULL
    vocabulary = con.sql("SELECT * FROM event_vocabulary").df()
    for field, coded in CODED_COLUMNS.items():
        values = sorted(events[field].dropna().unique())
        entries = vocabulary[vocabulary["field"] == field]
        assert list(entries.sort_values("code")["value"]) == values
        assert list(entries.sort_values("code")["code"]) == list(range(1, len(values) + 1))
        decoded = events[coded].map(dict(zip(entries["code"], entries["value"], strict=True)))
        stored = events[field].where(events[coded] > 0)
        assert (decoded.fillna("<null>") == stored.fillna("<null>")).all()
    ts_type = con.sql("SELECT typeof(ts) FROM events LIMIT 1").fetchall()[0][0]
    assert ts_type == "TIMESTAMP WITH TIME ZONE"
    identity = con.sql("SELECT * FROM identity").df()
    assert set(identity["identifier"]) == {"email:a", "crm:1", "email:b", "device:d", "email:c"}
    assert (world.quarantine / "events.parquet").is_file()
    assert report.identity.customers == 3


def test_customers_get_ids_and_merged_rows_are_reported(world):
    report = ingest(world, CFG, now=NOW, progress=False)
    assert report.customers is not None
    assert report.customers.by_reason == {"malformed_customer_key": 1}
    assert report.customers_merged == 1
    assert report.customers_without_events == 1
    customers = open_store(world).sql("SELECT * FROM customers").df().set_index("customer_key")
    assert customers.columns[0] == "customer_id"
    assert "email:a" not in customers.index  # merged into crm:1, which came first
    assert customers.loc["crm:1", "segment"] == "gold"
    assert customers.loc["loyalty:never", "customer_id"] == (
        "c_" + hashlib.md5(b"loyalty:never").hexdigest()[:16]
    )
    events = open_store(world).sql("SELECT DISTINCT customer_id FROM events").df()
    assert customers.loc["crm:1", "customer_id"] in set(events["customer_id"])
    assert "merged" in report.identity_summary_text()


def test_rerunning_ingest_gives_an_identical_store(world):
    ingest(world, CFG, now=NOW, progress=False)
    first = store_tables(world)
    ingest(world, CFG, now=NOW, progress=False)
    second = store_tables(world)
    for name in STORE_FILES:
        pd.testing.assert_frame_equal(first[name], second[name])


def test_the_same_file_twice_gives_the_same_store(tmp_path, world):
    ingest(world, CFG, now=NOW, progress=False)
    once = store_tables(world)["events.parquet"]
    shutil.copy(world.root / "events" / "a.csv", world.root / "events" / "a_copy.csv")
    report = ingest(world, CFG, now=NOW, progress=False)
    assert report.events.by_reason == {"unknown_channel": 1, "duplicate": 3}
    pd.testing.assert_frame_equal(store_tables(world)["events.parquet"], once)


def test_store_is_current_flips_when_an_input_changes(world):
    assert not store_is_current(world)
    ingest(world, CFG, now=NOW, progress=False)
    assert store_is_current(world)
    assert store_is_current(world, CFG)
    other = DataConfig(identity=IdentityConfig(max_links_per_identifier=3))
    assert not store_is_current(world, other)
    # the same size, a new modification time
    path = world.root / "events" / "a.csv"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not store_is_current(world)
    ingest(world, CFG, now=NOW, progress=False)
    assert store_is_current(world)
    with path.open("a", newline="") as f:
        f.write("6,2025-03-03T00:00:00Z,email:z,,web,visit,,,,\r\n")
    assert not store_is_current(world)
    ingest(world, CFG, now=NOW, progress=False)
    write_csv(world.root / "events" / "c.csv", [ev("7", "email:q")])
    assert not store_is_current(world)
    ingest(world, CFG, now=NOW, progress=False)
    (world.store / "identity.parquet").unlink()
    assert not store_is_current(world)


def test_manifest_records_inputs_and_counts(world):
    ingest(world, CFG, now=NOW, progress=False)
    manifest = json.loads((world.store / "manifest.json").read_text())
    assert [i["path"] for i in manifest["inputs"]] == [
        "events/a.csv",
        "events/b.parquet",
        "customers.csv",
    ]
    assert manifest["report"]["events"]["accepted"] == 5
    assert manifest["report"]["identity"]["customers"] == 3


def test_a_failed_ingest_leaves_no_current_store(world):
    ingest(world, CFG, now=NOW, progress=False)
    write_csv(world.root / "events" / "c.csv", [ev("7", "email:q")], ["event_id", "ts"])
    with pytest.raises(ValueError, match="customer_key"):
        ingest(world, CFG, now=NOW, progress=False)
    assert not (world.store / "manifest.json").exists()
    assert not store_is_current(world)


def test_shared_identifiers_are_written(tmp_path):
    rows = [ev(f"{i}", f"email:{i}", "card:guest") for i in range(10)]
    write_csv(tmp_path / "events.csv", rows)
    report = ingest(DataDir(tmp_path), CFG, now=NOW, progress=False)
    assert report.identity.cut_identifiers == 1
    shared = open_store(DataDir(tmp_path)).sql("SELECT * FROM shared_identifiers").df()
    assert shared["identifier"].tolist() == ["card:guest"]
    assert shared["degree"].tolist() == [10]
    customers = open_store(DataDir(tmp_path)).sql("SELECT * FROM customers").df()
    assert customers.empty and list(customers.columns) == ["customer_id", "customer_key"]
    assert report.identity.customers == 11


def test_open_store_without_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="nba ingest"):
        open_store(DataDir(tmp_path))


def test_a_customers_table_with_its_own_customer_id_keeps_it_renamed(tmp_path):
    write_csv(tmp_path / "events.csv", [ev("1", "crm:1")])
    write_csv(
        tmp_path / "customers.csv",
        [{"customer_key": "crm:1", "customer_id": "legacy-7"}],
        ["customer_key", "customer_id"],
    )
    ingest(DataDir(tmp_path), CFG, now=NOW, progress=False)
    customers = open_store(DataDir(tmp_path)).sql("SELECT * FROM customers").df()
    assert customers["source_customer_id"].tolist() == ["legacy-7"]
    assert customers["customer_id"].tolist() == ["c_" + hashlib.md5(b"crm:1").hexdigest()[:16]]
