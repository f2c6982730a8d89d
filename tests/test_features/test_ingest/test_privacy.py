"""Privacy by design: clear e-mails and phones hashed at ingestion, never stored in clear; the
erased quarantined unless they consent again."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from event_files import write_csv

from features.config import DataConfig
from features.errors import UserError
from features.ingest.contract import EVENT_COLUMNS, DataDir
from features.ingest.event_store import ingest
from features.ingest.privacy import SECRET_VARIABLE, Pseudonymiser, is_clear
from features.ingest.tombstones import append_erasure, read_salt, salted_hash

SECRET = "a-test-secret-of-32-characters!!"
NOW = datetime(2025, 6, 1, tzinfo=UTC)
PERSONAL = ["email", "phone"]
NBA = str(Path(sys.executable).parent / "nba")


def ev(event_id: str, key: str, link: str | None = None, ts: str = "2025-03-01T10:00:00Z", **kw):
    r = {c: None for c in EVENT_COLUMNS}
    r.update(event_id=event_id, ts=ts, customer_key=key, link_key=link)
    r.update({"channel": "web", "event_type": "visit", **kw})
    return r


CLEAR = [
    ev("1", "email: Ann.Lee@Example.COM", "crm:100"),
    ev("2", "phone:+44 20 7946 0958", "crm:100", channel="sms", event_type="open"),
    ev("3", "crm:100", "email:ann.lee@example.com", event_type="purchase", amount="20"),
    ev("4", "email:bob@example.org"),
    ev("5", "phone:(020) 7946-0001", channel="nowhere"),  # rejected: unknown channel
    ev("6", "email:9975ea27e97e570e", "phone:8c465d21f6ccf96f"),  # pseudonymous: as is
]


def clear_world(root: Path) -> DataDir:
    write_csv(root / "events.csv", CLEAR)
    # the customers' key as another system writes it
    rows = [{"customer_key": "email:Ann.Lee@Example.com", "age": 41}]
    write_csv(root / "customers.csv", rows, ["customer_key", "age"])
    return DataDir(root)


def expected(key: str) -> str:
    kind, _, value = key.strip().partition(":")
    norm = value.strip().lower() if kind == "email" else "+" + "".join(filter(str.isdigit, value))
    return f"{kind}:" + hmac.new(SECRET.encode(), norm.encode(), hashlib.sha256).hexdigest()


def strings_in(path: Path) -> list[str]:
    """Every text value of a parquet file."""
    table = pq.read_table(path)
    out: list[str] = []
    for col in table.columns:
        if pa.types.is_dictionary(col.type):
            col = col.cast(pa.string())
        if pa.types.is_string(col.type):
            out += [v for v in pc.unique(col).to_pylist() if v is not None]
    return out


def test_clear_is_recognised_and_hashing_is_idempotent(monkeypatch):
    monkeypatch.setenv(SECRET_VARIABLE, SECRET)
    p = Pseudonymiser.from_env(PERSONAL)
    assert is_clear("email", "a@b.c") and is_clear("phone", "+44 20 7946 0958")
    assert not is_clear("phone", "8c465d21f6ccf96f") and not is_clear("phone", "1234567890123456")
    hashed = p.hash_key("email: Ann.Lee@Example.COM")
    assert (
        hashed == expected("email:ann.lee@example.com") == p.hash_key("email:ann.lee@example.com")
    )
    assert p.hash_key(hashed) == hashed  # never hashed again
    assert p.hash_key("phone:+44 (20) 7946-0958") == p.hash_key("phone:+442079460958")
    for key in ["email:9975ea27e97e570e", "crm:a@b", "loyalty:8812", None]:
        assert p.hash_key(key) == key
    # the SQL is the same function
    con = duckdb.connect()
    assert p.hash_key("EMAIL: ann.lee@example.com") == hashed
    keys = ["email: Ann.Lee@Example.COM", "phone:+44 20 7946 0958", "crm:100", "email:9975ea27"]
    keys += ["Email:ann.lee@example.com"]
    con.register("k", pa.table({"k": keys}))
    sql = [r[0] for r in con.execute(f"SELECT {p.key_sql('k')} FROM k").fetchall()]
    assert sql == [p.hash_key(k) for k in keys]


def test_ingest_stores_no_clear_identifier(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_VARIABLE, SECRET)
    dd = clear_world(tmp_path / "w")
    report = ingest(dd, DataConfig(), now=NOW, progress=False)
    assert report.events.accepted == 5 and report.events.by_reason == {"unknown_channel": 1}
    events = pq.read_table(dd.store / "events.parquet").to_pandas().set_index("event_id")
    assert events.loc["1", "customer_key"] == expected("email:ann.lee@example.com")
    assert events.loc["3", "link_key"] == events.loc["1", "customer_key"]  # the same person
    assert events.loc["2", "customer_key"] == expected("phone:+442079460958")
    assert events.loc[["1", "2", "3"], "customer_id"].nunique() == 1
    assert events.loc["6", "customer_key"] == "email:9975ea27e97e570e"  # byte-identical
    # the customers table's key went through the same hash, so its profile joined the person
    customers = pq.read_table(dd.store / "customers.parquet").to_pandas()
    ann = customers[customers["customer_key"] == expected("email:ann.lee@example.com")]
    assert list(ann["customer_id"]) == [events.loc["1", "customer_id"]]
    quarantine = pq.read_table(dd.quarantine / "events.parquet").to_pandas()
    assert list(quarantine["customer_key"]) == [expected("phone:(020) 7946-0001")]
    # no clear identifier anywhere the pipeline wrote
    written = [*dd.store.glob("*.parquet"), *dd.quarantine.glob("*.parquet")]
    assert len(written) >= 7
    for path in written:
        for value in strings_in(path):
            assert "@" not in value and "7946" not in value, (path, value)


def test_ingest_refuses_clear_identifiers_without_a_secret(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_VARIABLE, raising=False)
    dd = clear_world(tmp_path / "w")
    with pytest.raises(
        UserError, match=f"events.csv row 1: a clear email identifier; set {SECRET_VARIABLE}"
    ):
        ingest(dd, DataConfig(), now=NOW, progress=False)
    assert not (dd.store / "manifest.json").exists()
    env = {k: v for k, v in __import__("os").environ.items() if k != SECRET_VARIABLE}
    run = subprocess.run(
        [NBA, "ingest", "--data", str(dd.root), "--now", NOW.isoformat()],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "export NBA_PII_SECRET=" in lines[0], run.stderr
    assert "Ann.Lee" not in run.stderr  # the message names the row, not the identifier
    # pseudonymous identifiers need no secret
    write_csv(dd.root / "events.csv", [ev("6", "email:9975ea27e97e570e", "phone:8c465d21f6ccf96f")])
    (dd.root / "customers.csv").unlink()
    ingest(dd, DataConfig(), now=NOW, progress=False)
    ids = pq.read_table(dd.store / "identity.parquet")["identifier"].to_pylist()
    assert ids == ["email:9975ea27e97e570e", "phone:8c465d21f6ccf96f"]


def test_an_erased_identifier_is_quarantined_until_it_consents(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_VARIABLE, SECRET)
    dd = DataDir(tmp_path / "w")
    erased_at = NOW - timedelta(days=10)
    salt = read_salt(dd, create=True)
    ann = expected("email:ann.lee@example.com")
    append_erasure(dd, {"at": erased_at.isoformat(), "identifiers": [salted_hash(salt, ann)]})

    def at(days: float) -> str:
        return (erased_at + timedelta(days=days)).isoformat()

    rows = [
        ev("old", "email:Ann.Lee@example.com", ts=at(-30)),  # before the erasure: erased too
        ev("a", "email:Ann.Lee@example.com", "crm:7", ts=at(1)),
        ev("z", "crm:7", "email:ann.lee@example.com", ts=at(1)),  # by the link key
        ev("b", "email:bob@example.org", ts=at(1)),
        *[ev(f"b{i}", "email:bob@example.org", ts=at(1)) for i in range(4)],
        ev("old-consent", "email:ann.lee@example.com", ts=at(-1), event_type="consent_granted"),
    ]
    write_csv(dd.root / "events.csv", rows)
    ingest(dd, DataConfig(), now=NOW, progress=False)
    quarantine = pq.read_table(dd.quarantine / "events.parquet").to_pandas()
    assert sorted(quarantine.loc[quarantine["reason"] == "erased", "event_id"]) == [
        "a",
        "old",
        "old-consent",
        "z",
    ]
    assert set(quarantine["customer_key"]) <= {ann, "crm:7"}
    # a new consent re-admits them from that moment on
    rows += [
        ev("consent", "email:ann.lee@example.com", ts=at(2), event_type="consent_granted"),
        ev("c", "email:ann.lee@example.com", ts=at(3), event_type="purchase", amount="5"),
    ]
    write_csv(dd.root / "events.csv", rows)
    report = ingest(dd, DataConfig(), now=NOW, progress=False)
    assert report.events.by_reason == {"erased": 4}
    stored = set(pq.read_table(dd.store / "events.parquet")["event_id"].to_pylist())
    assert stored == {"b", "b0", "b1", "b2", "b3", "consent", "c"}
