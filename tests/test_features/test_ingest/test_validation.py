"""Validation of the events and customers tables: every reason, reconciliation, idempotency."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.config import DataConfig
from features.ingest.contract import EVENT_COLUMNS, EVENT_SCHEMA, DataDir
from features.ingest.validation import (
    EVENT_REASONS,
    validate_customers,
    validate_events,
    write_quarantine,
)

NOW = datetime(2025, 6, 1, tzinfo=UTC)
CFG = DataConfig()


def row(**overrides: str | None) -> dict[str, str | None]:
    base = {
        "event_id": "e1",
        "ts": "2025-03-01T10:00:00Z",
        "customer_key": "email:a",
        "link_key": None,
        "channel": "email",
        "event_type": "sent",
        "action_id": "act1",
        "amount": None,
        "category": None,
        "propensity": "0.5",
    }
    base.update(overrides)
    return base


def write(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """Rows of text to CSV or (all-string) parquet, by the path's suffix."""
    columns = columns or EVENT_COLUMNS
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                w.writerow(["" if r.get(c) is None else r[c] for c in columns])
    else:
        table = pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in columns})
        pq.write_table(table, path)
    return path


@pytest.fixture
def con():
    c = duckdb.connect()
    yield c
    c.close()


def accepted(con) -> pd.DataFrame:
    return con.sql("SELECT * FROM accepted_events ORDER BY event_id").df()


def rejected(con) -> pd.DataFrame:
    return con.sql("SELECT * FROM rejected_events").df()


CASES = [
    ("missing_event_id", {"event_id": None}),
    ("missing_event_id", {"event_id": "  "}),
    ("empty_customer_key", {"customer_key": None}),
    ("malformed_customer_key", {"customer_key": "8812"}),
    ("malformed_customer_key", {"customer_key": "fax:8812"}),  # not a configured type
    ("malformed_customer_key", {"customer_key": "Email:a"}),
    ("malformed_customer_key", {"customer_key": "email:"}),
    ("malformed_customer_key", {"customer_key": "email:a b"}),
    ("malformed_link_key", {"link_key": "loyalty"}),
    ("malformed_link_key", {"link_key": "pager:1"}),
    ("unknown_channel", {"channel": "fax"}),
    ("unknown_channel", {"channel": None}),
    ("unknown_event_type", {"event_type": "teleport"}),
    ("missing_timestamp", {"ts": None}),
    ("unparseable_timestamp", {"ts": "yesterday"}),
    ("unparseable_timestamp", {"ts": "2025-13-01"}),
    ("unparseable_timestamp", {"ts": "infinity"}),
    ("future_timestamp", {"ts": "2025-06-01T00:05:01Z"}),  # now + 300 s tolerance + 1 s
    ("non_numeric_amount", {"event_type": "purchase", "amount": "12,50"}),
    ("non_numeric_amount", {"event_type": "purchase", "amount": "nan"}),
    ("negative_amount", {"event_type": "purchase", "amount": "-3"}),
    ("non_numeric_propensity", {"propensity": "high"}),
    ("propensity_out_of_range", {"propensity": "0"}),
    ("propensity_out_of_range", {"propensity": "1.5"}),
]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize(("reason", "bad"), CASES)
def test_each_reason_is_quarantined_with_its_file_and_row(tmp_path, con, suffix, reason, bad):
    rows = [row(event_id="ok1"), row(event_id="ok2"), row(**{"event_id": "bad", **bad})]
    path = write(tmp_path / "events" / f"part{suffix}", rows)
    result = validate_events([path], CFG, con, now=NOW)
    assert result.report.by_reason == {reason: 1}
    assert (result.report.accepted, result.report.rejected) == (2, 1)
    write_quarantine(DataDir(tmp_path), con, result)
    q = pd.read_parquet(tmp_path / "quarantine" / "events.parquet")
    assert len(q) == 1
    r = q.iloc[0]
    assert (r["reason"], r["reasons"]) == (reason, reason)
    assert r["source_file"] == str(path)
    assert r["source_row"] == 3
    # original values come back as text
    for col, value in bad.items():
        assert (None if pd.isna(r[col]) else r[col]) == value
    assert list(q.columns) == [
        *EVENT_SCHEMA.names,
        "reason",
        "reasons",
        "source_file",
        "source_row",
    ]


def test_duplicate_reason_and_first_copy_kept(tmp_path, con):
    rows = [row(event_id="x", action_id="first"), row(), row(event_id="x", action_id="second")]
    path = write(tmp_path / "events.csv", rows)
    result = validate_events([path], CFG, con, now=NOW)
    assert result.report.by_reason == {"duplicate": 1}
    acc = accepted(con).set_index("event_id")
    assert acc.loc["x", "action_id"] == "first"
    rej = rejected(con)
    assert rej[["event_id", "action_id", "reason", "source_row"]].values.tolist() == [
        ["x", "second", "duplicate", 3]
    ]
    assert rej["ts"].tolist() == ["2025-03-01T10:00:00Z"]  # the original text


def test_tolerance_boundary_and_time_zones(tmp_path, con):
    rows = [
        row(event_id="edge", ts="2025-06-01T00:05:00Z"),  # exactly now + tolerance: accepted
        row(event_id="naive", ts="2025-03-01 10:00:00"),  # no zone: UTC
        row(event_id="offset", ts="2025-03-01T12:00:00+02:00"),
    ]
    validate_events([write(tmp_path / "events.csv", rows)], CFG, con, now=NOW)
    acc = accepted(con).set_index("event_id")["ts"]
    assert acc["edge"] == pd.Timestamp("2025-06-01 00:05", tz="UTC")
    assert acc["naive"] == pd.Timestamp("2025-03-01 10:00", tz="UTC")
    assert acc["offset"] == pd.Timestamp("2025-03-01 10:00", tz="UTC")
    assert con.execute("SELECT current_setting('TimeZone')").fetchall()[0][0] == "UTC"


def test_now_defaults_to_the_current_time(tmp_path, con):
    rows = [row(event_id="past"), row(event_id="far", ts="2999-01-01")]
    result = validate_events([write(tmp_path / "events.csv", rows)], CFG, con)
    assert result.report.by_reason == {"future_timestamp": 1}


def test_reasons_lists_every_failing_check_in_priority_order(tmp_path, con):
    bad = row(customer_key="nokey", channel="fax", amount="-1", propensity="2", ts="2999-01-01")
    validate_events([write(tmp_path / "events.csv", [bad])], CFG, con, now=NOW)
    r = rejected(con).iloc[0]
    assert r["reason"] == "malformed_customer_key"
    assert r["reasons"].split(";") == [
        "malformed_customer_key",
        "unknown_channel",
        "future_timestamp",
        "negative_amount",
        "propensity_out_of_range",
    ]
    assert set(r["reasons"].split(";")) <= set(EVENT_REASONS)


def test_reconciliation_on_a_mixed_file(tmp_path, con):
    rows = [row(event_id=f"ok{i}") for i in range(10)]
    rows += [row(event_id="ok3")] * 3  # 3 duplicates
    rows += [row(**{"event_id": f"b{i}", **bad}) for i, (_, bad) in enumerate(CASES)]
    result = validate_events([write(tmp_path / "events.csv", rows)], CFG, con, now=NOW)
    rep = result.report
    assert rep.received == len(rows)
    assert rep.accepted == 10
    assert rep.accepted + rep.rejected == rep.received
    assert sum(rep.by_reason.values()) == rep.rejected == 3 + len(CASES)
    assert rep.by_reason["duplicate"] == 3
    assert list(rep.by_reason) == [r for r in EVENT_REASONS if r in rep.by_reason]
    n_acc = con.execute("SELECT count(*) FROM accepted_events").fetchall()[0][0]
    n_rej = con.execute("SELECT count(*) FROM rejected_events").fetchall()[0][0]
    assert (n_acc, n_rej) == (rep.accepted, rep.rejected)


def test_duplicates_across_files_keep_the_first_file(tmp_path, con):
    a = write(tmp_path / "events" / "a.csv", [row(event_id="x", action_id="from_a")])
    b = write(tmp_path / "events" / "b.parquet", [row(event_id="x", action_id="from_b")])
    for files, expected in [([a, b], "from_a"), ([b, a], "from_b")]:
        validate_events(files, CFG, con, now=NOW)
        assert accepted(con)["action_id"].tolist() == [expected]
        assert rejected(con)["source_file"].tolist() == [str(files[1])]


def test_provenance_across_several_parquet_and_csv_files(tmp_path, con):
    a = write(tmp_path / "events" / "a.parquet", [row(event_id="x"), row(event_id="y")])
    b = write(tmp_path / "events" / "b.csv", [row(event_id="z", channel="fax")])
    c = write(tmp_path / "events" / "c.parquet", [row(event_id="w"), row(event_id="x")])
    result = validate_events([a, b, c], CFG, con, now=NOW)
    assert result.report.received == 5
    rej = rejected(con)
    assert rej[["event_id", "reason", "source_file", "source_row"]].values.tolist() == [
        ["z", "unknown_channel", str(b), 1],
        ["x", "duplicate", str(c), 2],
    ]


def test_an_invalid_first_copy_does_not_hide_a_valid_later_one(tmp_path, con):
    rows = [row(event_id="x", channel="fax"), row(event_id="x", action_id="good")]
    result = validate_events([write(tmp_path / "events.csv", rows)], CFG, con, now=NOW)
    assert result.report.by_reason == {"unknown_channel": 1}
    assert accepted(con)["action_id"].tolist() == ["good"]


def test_the_same_file_twice_gives_the_same_accepted_events(tmp_path, con):
    rows = [row(event_id=f"e{i}") for i in range(5)] + [row(event_id="bad", channel="fax")]
    once = write(tmp_path / "once" / "events.csv", rows)
    first = validate_events([once], CFG, con, now=NOW)
    single = accepted(con)
    copies = [write(tmp_path / "twice" / name, rows) for name in ("a.csv", "b.csv")]
    second = validate_events(copies, CFG, con, now=NOW)
    pd.testing.assert_frame_equal(accepted(con), single)
    assert second.report.accepted == first.report.accepted == 5
    assert second.report.by_reason == {"unknown_channel": 2, "duplicate": 5}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_missing_required_column_names_file_and_column(tmp_path, con, suffix):
    good = write(tmp_path / "events" / f"a{suffix}", [row()])
    columns = [c for c in EVENT_COLUMNS if c != "channel"]
    bad = write(tmp_path / "events" / f"b{suffix}", [row()], columns)
    with pytest.raises(ValueError, match="channel") as err:
        validate_events([good, bad], CFG, con, now=NOW)
    assert str(bad) in str(err.value)
    assert "event_type" in str(err.value)  # lists what was expected


def test_missing_optional_columns_are_null(tmp_path, con):
    columns = ["event_id", "ts", "customer_key", "channel", "event_type"]
    a = write(tmp_path / "a.csv", [row(event_id="a")], columns)
    b = write(tmp_path / "b.parquet", [row(event_id="b", amount="5")], [*columns, "amount"])
    validate_events([a, b], CFG, con, now=NOW)
    acc = accepted(con)
    assert list(acc.columns) == EVENT_SCHEMA.names
    assert acc["link_key"].isna().all() and acc["propensity"].isna().all()
    assert acc.set_index("event_id")["amount"].fillna(-1).to_dict() == {"a": -1, "b": 5.0}


def test_csv_and_typed_parquet_give_the_same_accepted_events(tmp_path, con):
    rows = [
        row(event_id="a", ts="2025-03-01T10:00:00.123456Z", link_key="crm:1"),
        row(event_id="b", event_type="purchase", amount="12.5", category="home", propensity=None),
        row(event_id="c", action_id=None, propensity="1"),
        row(event_id="bad", amount="x"),
    ]
    csv_path = write(tmp_path / "events.csv", rows)
    validate_events([csv_path], CFG, con, now=NOW)
    from_csv = con.sql("SELECT * FROM accepted_events ORDER BY event_id").arrow().read_all()
    # the same rows as a typed parquet file (timestamps, doubles)
    frame = pd.DataFrame(rows[:3])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    for c in ("amount", "propensity"):
        frame[c] = pd.to_numeric(frame[c])
    pq_path = tmp_path / "events.parquet"
    frame.to_parquet(pq_path, index=False)
    validate_events([pq_path], CFG, con, now=NOW)
    from_pq = con.sql("SELECT * FROM accepted_events ORDER BY event_id").arrow().read_all()
    assert from_csv.equals(from_pq)
    assert from_csv.schema.names == EVENT_SCHEMA.names
    assert [f.type for f in from_csv.schema] == [f.type for f in EVENT_SCHEMA]


def test_blank_optional_strings_are_absent(tmp_path, con):
    pq_path = write(tmp_path / "events.parquet", [row(link_key="", action_id=" ", category="")])
    result = validate_events([pq_path], CFG, con, now=NOW)
    assert result.report.accepted == 1
    acc = accepted(con).iloc[0]
    assert pd.isna(acc["link_key"]) and pd.isna(acc["action_id"]) and pd.isna(acc["category"])


def test_write_quarantine_report(tmp_path, con):
    rows = [row(event_id="a"), row(event_id="b", channel="fax")]
    ev = validate_events([write(tmp_path / "events.csv", rows)], CFG, con, now=NOW)
    cust = validate_customers(
        [write(tmp_path / "customers.csv", [{"customer_key": "crm:1"}], ["customer_key"])],
        CFG,
        con,
    )
    paths = write_quarantine(DataDir(tmp_path), con, ev, cust)
    assert {p.name for p in paths} == {"events.parquet", "customers.parquet", "report.json"}
    report = json.loads((tmp_path / "quarantine" / "report.json").read_text())
    assert report["events"]["received"] == 2
    assert report["events"]["by_reason"] == {"unknown_channel": 1}
    assert report["customers"]["accepted"] == 1


def test_customers_validation(tmp_path, con):
    cols = ["customer_key", "age", "segment"]
    rows = [
        {"customer_key": "crm:1", "age": "34", "segment": "gold"},
        {"customer_key": "", "age": "1", "segment": "x"},
        {"customer_key": "nokey", "age": "2", "segment": "y"},
        {"customer_key": "crm:1", "age": "99", "segment": "dup"},
        {"customer_key": "email:z", "age": "50", "segment": "silver"},
    ]
    path = write(tmp_path / "customers.csv", rows, cols)
    result = validate_customers([path], CFG, con)
    rep = result.report
    assert (rep.received, rep.accepted, rep.rejected) == (5, 2, 3)
    assert rep.by_reason == {"empty_customer_key": 1, "malformed_customer_key": 1, "duplicate": 1}
    acc = con.sql("SELECT * FROM accepted_customers").df()
    assert list(acc.columns) == cols
    assert acc["segment"].tolist() == ["gold", "silver"]
    assert acc["age"].tolist() == [34, 50]  # profile columns keep their inferred types
    rej = con.sql("SELECT * FROM rejected_customers").df()
    assert rej["source_row"].tolist() == [2, 3, 4]
    assert rej["reason"].tolist() == ["empty_customer_key", "malformed_customer_key", "duplicate"]


def test_customers_missing_key_column(tmp_path, con):
    path = write(tmp_path / "customers.parquet", [{"id": "1"}], ["id"])
    with pytest.raises(ValueError, match="customer_key"):
        validate_customers([path], CFG, con)


def test_customers_from_parquet_and_csv(tmp_path, con):
    a = write(
        tmp_path / "customers" / "a.parquet",
        [{"customer_key": "crm:1", "segment": "gold"}],
        ["customer_key", "segment"],
    )
    b = write(
        tmp_path / "customers" / "b.csv",
        [{"customer_key": "crm:1", "age": "7"}, {"customer_key": "crm:2", "age": "8"}],
        ["customer_key", "age"],
    )
    result = validate_customers([a, b], CFG, con)
    assert result.report.by_reason == {"duplicate": 1}
    acc = con.sql("SELECT * FROM accepted_customers").df()
    assert acc["customer_key"].tolist() == ["crm:1", "crm:2"]
    assert acc["segment"].tolist()[0] == "gold" and pd.isna(acc["segment"].tolist()[1])
    rej = con.sql("SELECT * FROM rejected_customers").df()
    assert rej[["customer_key", "source_file", "source_row"]].values.tolist() == [
        ["crm:1", str(b), 1]
    ]


def test_a_malformed_csv_row_stops_with_its_file_and_line(tmp_path, con):
    path = tmp_path / "events.csv"
    write(path, [row(event_id="a"), row(event_id="b")])
    with path.open("a", newline="") as f:
        f.write("c,2025-03-01,email:a,,web,visit,,,,,EXTRA\r\n")  # one field too many
    with pytest.raises(ValueError, match="Line: 4") as err:
        validate_events([path], CFG, con, now=NOW)
    assert str(path) in str(err.value)


def test_header_only_and_empty_csv(tmp_path, con):
    header_only = write(tmp_path / "a.csv", [])
    result = validate_events([header_only], CFG, con, now=NOW)
    assert (result.report.received, result.report.accepted) == (0, 0)
    empty = tmp_path / "b.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="header"):
        validate_events([empty], CFG, con, now=NOW)


def test_quoted_fields_with_commas_and_newlines(tmp_path, con):
    path = write(tmp_path / "events.csv", [row(category='home, "garden"\nand more')])
    validate_events([path], CFG, con, now=NOW)
    assert accepted(con)["category"].tolist() == ['home, "garden"\nand more']


def test_customers_csv_profile_types(tmp_path, con):
    cols = ["customer_key", "postcode", "score", "vip", "since", "note", "n"]
    rows = [
        {"customer_key": "crm:1", "postcode": "01234", "score": "1.5", "vip": "true",
         "since": "2024-01-31", "note": "x", "n": "3"},
        {"customer_key": "crm:2", "postcode": "98000", "score": "2", "vip": "False",
         "since": None, "note": "12", "n": None},
    ]  # fmt: skip
    validate_customers([write(tmp_path / "customers.csv", rows, cols)], CFG, con)
    types = dict(con.execute("DESCRIBE accepted_customers").fetchall()[i][:2] for i in range(7))
    assert types == {
        "customer_key": "VARCHAR",
        "postcode": "VARCHAR",  # a leading zero: text
        "score": "DOUBLE",
        "vip": "BOOLEAN",
        "since": "DATE",
        "note": "VARCHAR",
        "n": "BIGINT",
    }
