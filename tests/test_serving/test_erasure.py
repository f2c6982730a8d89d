"""The right to erasure and privacy over HTTP: a real `nba serve` hashes clear identifiers of
POST /events, POST /forget erases a person from every store (proved by searching every file of
the data directory, the SQLite files and MLflow's artifacts for each of their identifiers, clear
and hashed, and their customer_id), later events of theirs are rejected as `erased` until they
consent again; the online store's erasure on both backends (every Redis key and value searched).

The world is a copy of the session's trained world (its own online store and service), with a
file of clear e-mails and phones added, so nothing here changes what other tests see.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from service_process import NBA, new_id, now_iso, start_service

from features.config import DataConfig
from features.ingest.contract import EVENT_COLUMNS, DataDir
from features.ingest.event_store import ingest, open_store
from features.ingest.privacy import SECRET_VARIABLE, Pseudonymiser
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.online_store import OnlineStore

pytestmark = pytest.mark.integration
SECRET = "erasure-test-secret-0123456789abcdef"
FS = FeatureSet(DataConfig(), FeatureConfig())
CLEAR_EMAIL = "email:Jane.Doe@Example.com"
CLEAR_PHONE = "phone:+44 20 7946 0958"
POSTED_EMAIL = "email: JANE.second@example.COM"
OTHER_EMAIL = "email:Keep.Me@Example.org"


@dataclass
class World:
    root: Path
    service: object
    person: str  # the erased person's customer_id
    identifiers: list[str]  # every identifier of theirs, as stored (hashed)
    clear: list[str]  # the clear forms they arrived in
    other: str  # a customer who stays
    end: pd.Timestamp


def hashed(key: str) -> str:
    return Pseudonymiser.from_env(["email", "phone"]).hash_key(key)


def write_events(path: Path, rows: list[dict]) -> None:
    frame = pd.DataFrame([{c: r.get(c) for c in EVENT_COLUMNS} for r in rows])
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def world(trained_world, tmp_path_factory):
    old = os.environ.get(SECRET_VARIABLE)
    os.environ[SECRET_VARIABLE] = SECRET
    root = tmp_path_factory.mktemp("erasure") / "world"
    shutil.copytree(
        trained_world.data_dir.root,
        root,
        ignore=shutil.ignore_patterns("online.sqlite*", "service-*.log", "*.yaml"),
    )
    con = trained_world.con
    (person, crm), (other, other_crm) = con.execute(
        "SELECT customer_id, min(identifier) FILTER (identifier LIKE 'crm:%') FROM identity "
        "GROUP BY customer_id HAVING count(*) >= 3 AND bool_or(identifier LIKE 'crm:%') "
        "ORDER BY customer_id LIMIT 2"
    ).fetchall()
    end = trained_world.end
    ts = (end - timedelta(days=2)).isoformat()
    base = {"ts": ts, "channel": "web", "event_type": "visit"}
    write_events(
        root / "events" / "clear-ids.csv",
        [
            {**base, "event_id": new_id(), "customer_key": CLEAR_EMAIL, "link_key": crm},
            {**base, "event_id": new_id(), "customer_key": crm, "link_key": CLEAR_PHONE},
            {**base, "event_id": new_id(), "customer_key": OTHER_EMAIL, "link_key": other_crm},
        ],
    )
    ingest(DataDir(root), DataConfig(), progress=False)
    store_con = open_store(DataDir(root))
    with OnlineStore(DataDir(root).online_store, FS) as store:
        store.materialize(store_con, as_of=end)
    store_con.close()
    service = start_service(root)
    ids = pq.read_table(root / "store" / "identity.parquet").to_pandas()
    mine = sorted(ids.loc[ids["customer_id"] == person, "identifier"])
    assert hashed(CLEAR_EMAIL) in mine and hashed(CLEAR_PHONE) in mine and crm in mine
    yield World(root, service, person, mine, [CLEAR_EMAIL, CLEAR_PHONE], other, end)
    service.stop()
    if old is None:
        os.environ.pop(SECRET_VARIABLE, None)
    else:
        os.environ[SECRET_VARIABLE] = old


def clear_fragments(keys: list[str]) -> list[str]:
    """What of a clear identifier could be stored: its value as written and normalised."""
    out = []
    for k in keys:
        value = k.partition(":")[2].strip()
        out += [value, value.lower()]
        if k.startswith("phone:"):
            out.append("+" + "".join(filter(str.isdigit, value)))
    return out


def found_in(root: Path, needles: list[str]) -> list[tuple[str, str]]:
    """(file, needle) for every needle in any file under root: each text value of a parquet
    file, the bytes of any other file (SQLite databases, JSON lines, MLflow's artifacts)."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            values = []
            for col in table.columns:
                if pa.types.is_dictionary(col.type):
                    col = col.cast(pa.string())
                if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                    values += [v for v in pc.unique(col).to_pylist() if v]
            text = "\n".join(values)
            hits += [(str(path), n) for n in needles if n in text]
        else:
            data = path.read_bytes()
            hits += [(str(path), n) for n in needles if n.encode() in data]
    return hits


def test_post_events_hashes_clear_identifiers(world):
    svc = world.service
    crm = next(i for i in world.identifiers if i.startswith("crm:"))
    event = {
        "event_id": new_id(),
        "ts": now_iso(),
        "customer_key": POSTED_EMAIL,
        "link_key": crm,
        "channel": "email",
        "event_type": "open",
    }
    r = svc.post("/events", {"events": [event]})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    with OnlineStore(DataDir(world.root).online_store, FS) as store:
        assert store.resolve(hashed(POSTED_EMAIL)) == world.person
        logged = store.logged_events_of(world.person)
    assert hashed(POSTED_EMAIL) in set(logged["customer_key"])
    # the 360 view finds them by the clear e-mail and shows every identifier masked
    r = svc.post("/customers", {"customer": "email:jane.doe@example.com"})
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["customer_id"] == world.person
    assert all("@" not in i and len(i) < 16 for i in view["identifiers"] if i[:5] == "email")
    assert not found_in(world.root / "store", clear_fragments([POSTED_EMAIL, CLEAR_EMAIL]))
    world.identifiers.append(hashed(POSTED_EMAIL))
    world.clear.append(POSTED_EMAIL)


def test_forget_erases_the_person_from_every_store(world):
    svc = world.service
    r = svc.post("/recommend", {"customer": CLEAR_EMAIL, "channel": "web"})
    assert r.status_code == 200, r.text  # a real-time decision logged for them
    needles = [world.person, *world.identifiers, *clear_fragments(world.clear)]
    before = found_in(world.root, needles)
    places = {Path(f).relative_to(world.root).parts[0] for f, _ in before}
    assert {"events", "store", "decisions", "truth", "customers"} <= places, places
    assert svc.post("/forget", {"identifier": CLEAR_EMAIL}, token=None).status_code == 401
    r = svc.post("/forget", {"identifier": "EMAIL: jane.doe@example.com"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["customers"] == 1 and answer["identifiers"] == len(world.identifiers)
    assert answer["online_events"] >= 1 and answer["input_examples"] >= 1
    assert found_in(world.root, needles) == []
    # the audit log: salted hashes and a time, nothing personal
    log = (world.root / "erasure" / "log.jsonl").read_text()
    assert len(log.splitlines()) == 1 and '"at"' in log
    # gone from what later training sets, campaigns and the 360 view read
    con = open_store(DataDir(world.root))
    (n,) = con.execute(
        "SELECT count(*) FROM identity WHERE customer_id = ?", [world.person]
    ).fetchone()
    assert n == 0
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] > 0
    con.close()
    assert svc.post("/customers", {"customer": CLEAR_EMAIL}).status_code == 404
    # the other customer is untouched
    assert svc.post("/customers", {"customer": OTHER_EMAIL}).status_code == 200
    assert svc.post("/forget", {"identifier": "crm:nobody-at-all"}).status_code == 404


def test_an_erased_person_comes_back_only_with_a_new_consent(world):
    svc = world.service
    crm = next(i for i in world.identifiers if i.startswith("crm:"))
    visit = {"ts": now_iso(), "channel": "web", "event_type": "visit"}
    later = [
        {**visit, "event_id": new_id(), "customer_key": CLEAR_EMAIL},
        {**visit, "event_id": new_id(), "customer_key": crm},
        {**visit, "event_id": new_id(), "customer_key": "loyalty:brand-new", "link_key": crm},
    ]
    r = svc.post("/events", {"events": later})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["by_reason"] == {"erased": 3} and body["accepted"] + body["rejected"] == 3
    assert [x["reason"] for x in body["results"]] == ["erased"] * 3
    # in batch too: an events file naming them is quarantined as erased
    write_events(
        world.root / "events" / "late.csv",
        [{**visit, "ts": world.end.isoformat(), "event_id": new_id(), "customer_key": CLEAR_EMAIL}],
    )
    report = ingest(DataDir(world.root), DataConfig(), progress=False)
    assert report.events.by_reason.get("erased") == 1
    quarantine = pq.read_table(world.root / "quarantine" / "events.parquet").to_pandas()
    assert list(quarantine.loc[quarantine["reason"] == "erased", "customer_key"]) == [
        hashed(CLEAR_EMAIL)
    ]
    # a consent that comes with their events re-admits them
    consent = {**visit, "event_id": new_id(), "customer_key": CLEAR_EMAIL}
    consent.update(channel="email", event_type="consent_granted")
    again = [consent, {**visit, "event_id": new_id(), "customer_key": CLEAR_EMAIL}]
    body = svc.post("/events", {"events": again}).json()
    assert body["accepted"] == 2, body
    body = svc.post("/events", {"events": [{**later[0], "event_id": new_id()}]}).json()
    assert body["accepted"] == 1, body  # known again: no consent needed on every batch


def test_nba_forget_on_the_command_line(world):
    import subprocess

    other = world.other
    run = subprocess.run(
        [NBA, "forget", other, "--data", str(world.root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "erased" in run.stdout
    assert found_in(world.root, [other, *clear_fragments([OTHER_EMAIL])]) == []
    assert world.service.post("/customers", {"customer": OTHER_EMAIL}).status_code == 404
    # again (a retried request, an interrupted erasure): every place cleaned again, no new record
    from typer.testing import CliRunner

    from serving.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(app, ["forget", other, "--data", str(world.root)])
    assert result.exit_code == 0 and "already erased" in result.output, result.output
    assert len((world.root / "erasure" / "log.jsonl").read_text().splitlines()) == 2
    result = runner.invoke(app, ["forget", "crm:nobody-at-all", "--data", str(world.root)])
    assert result.exit_code == 2, result.output
    assert "no customer known by 'crm:nobody-at-all'" in result.output


def _redis_dump(store) -> bytes:
    """Every key and value of the store's Redis namespace, as bytes."""
    r = store._r
    out = []
    for key in r.scan_iter(match=f"{store.ns}:*"):
        kind = r.type(key).decode()
        out.append(key)
        if kind == "string":
            out.append(r.get(key))
        elif kind == "set":
            out += list(r.smembers(key))
        elif kind == "zset":
            out += list(r.zrange(key, 0, -1))
        elif kind == "hash":
            for k, v in r.hgetall(key).items():
                out += [k, v]
        elif kind == "list":
            out += list(r.lrange(key, 0, -1))
    return b"\n".join(out)


def test_the_online_store_forgets_a_customer(opener, tmp_path):
    def ev(key: str, link: str | None = None, kind: str = "purchase") -> dict:
        return {
            "event_id": new_id(),
            "ts": now_iso(),
            "customer_key": key,
            "link_key": link,
            "channel": "web",
            "event_type": kind,
            "amount": 10.0,
        }

    with opener() as store:
        store.apply_records([ev("crm:erase-me", "email:erase-hash")], log=True)
        store.apply_records([ev("email:erase-hash"), ev("crm:stay")], log=True)
        cid = store.resolve("crm:erase-me")
        assert store.identifiers(cid)
        removed = store.forget_customer(cid, ["device:only-named"])
        assert removed == 2
        assert store.resolve("crm:erase-me") is None and store.resolve("email:erase-hash") is None
        assert not store.knows(cid) and store.identifiers(cid) == []
        assert len(store.logged_events()) == 1 and store.resolve("crm:stay") is not None
        if hasattr(store, "_r"):
            dump = _redis_dump(store)
        else:
            store._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            dump = b"".join(p.read_bytes() for p in tmp_path.glob("online.db*"))
        for needle in ["crm:erase-me", "erase-hash", cid]:
            assert needle.encode() not in dump, needle
        assert b"crm:stay" in dump


def test_the_service_gate_rejects_clear_identifiers_without_a_secret(tmp_path, monkeypatch):
    from serving.erasure import CLEAR_IDENTIFIER, PrivacyGate

    monkeypatch.delenv(SECRET_VARIABLE, raising=False)
    gate = PrivacyGate(DataDir(tmp_path), DataConfig())
    records = [
        {"customer_key": "email:someone@example.com", "ts": now_iso()},
        {"customer_key": "crm:1", "link_key": "phone:+44 20 7946 0958", "ts": now_iso()},
        {"customer_key": "email:9975ea27e97e570e", "ts": now_iso()},
    ]
    assert gate.screen(records, store=None) == {0: CLEAR_IDENTIFIER, 1: CLEAR_IDENTIFIER}
    assert records[2]["customer_key"] == "email:9975ea27e97e570e"
    monkeypatch.setenv(SECRET_VARIABLE, "short")
    with pytest.raises(ValueError, match="at least 16"):
        PrivacyGate(DataDir(tmp_path), DataConfig())
