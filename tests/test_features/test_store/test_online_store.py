"""Online store: durability across restarts and crashes, idempotency, late events, identity,
nothing lost (applied + rejected == received), refusal of state from other definitions,
conditional batches. Every behaviour is checked on both backends (SQLite and a real
redis-server), through the `opener` fixture."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import redis
from redis_server import RedisServer

from features.config import DataConfig, OnlineStoreConfig
from features.ingest.identity import customer_id_sql
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.online_store import (
    CONFLICT,
    DUPLICATE,
    EMPTY_CUSTOMER_KEY,
    FUTURE_TIMESTAMP,
    MALFORMED_CUSTOMER_KEY,
    MALFORMED_LINK_KEY,
    MISSING_EVENT_ID,
    MISSING_TIMESTAMP,
    NON_NUMERIC_AMOUNT,
    UNKNOWN_CHANNEL,
    UNKNOWN_EVENT_TYPE,
    UNPARSEABLE_TIMESTAMP,
    DefinitionMismatch,
    OnlineStore,
    customer_id_of,
)
from features.store.redis_online_store import OnlineStoreUnavailable, RedisOnlineStore

ROOT = Path(__file__).resolve().parents[2]
FS = FeatureSet(DataConfig(), FeatureConfig())
T = pd.Timestamp("2025-03-01 12:00", tz="UTC")
T_US = int((T - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1))
DAY_US = 86_400_000_000
COLUMNS = [
    "event_id",
    "ts",
    "customer_key",
    "link_key",
    "channel",
    "event_type",
    "amount",
    "category",
]


def events(*rows: tuple) -> pd.DataFrame:
    """Rows of (event_id, days after T, customer_key, link_key, channel, event_type, amount,
    category); a string in the days slot is kept as a raw timestamp value."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["ts"] = [T + pd.Timedelta(days=d) if isinstance(d, int | float) else d for d in df["ts"]]
    return df


def purchase(eid: str, days: float, key: str = "loyalty:1", amount: float = 10.0) -> tuple:
    return (eid, days, key, None, "store", "purchase", amount, "home")


@pytest.fixture
def store(opener):
    s = opener()
    yield s
    s.close()


def _state_row(store: OnlineStore, customer_id: str) -> tuple:
    return store._con.execute(
        "SELECT last_us, base, win FROM state WHERE customer_id = ?", (customer_id,)
    ).fetchone()


def test_survives_close_and_reopen(opener):
    with opener() as s:
        s.apply_events(events(purchase("a", 0), purchase("b", 1, amount=5.0)))
        cid = s.resolve("loyalty:1")
        before = s.read(cid, T_US + 3 * DAY_US)
    with opener() as s:
        assert s.resolve("loyalty:1") == cid
        np.testing.assert_equal(s.read(cid, T_US + 3 * DAY_US), before)  # NaN == NaN
        assert before["all_purchase_count"] == 2.0 and before["all_spend_sum"] == 15.0
        # applied ids survive too: a replay after the restart is a duplicate
        again = s.apply_events(events(purchase("a", 0)))
        assert again.applied == 0 and list(again.rejected["reason"]) == [DUPLICATE]


_CHILD = textwrap.dedent(
    """
    import json, sys
    import pandas as pd
    from features.config import DataConfig
    from features.store.definitions import FeatureConfig, FeatureSet
    from features.config import OnlineStoreConfig
    from features.store.online_store import OnlineStore
    from features.store.redis_online_store import OnlineStoreUnavailable, RedisOnlineStore

    spec, fs = json.loads(sys.argv[1]), FeatureSet(DataConfig(), FeatureConfig())
    if "path" in spec:
        store = OnlineStore(spec["path"], fs)
    else:
        store = RedisOnlineStore(OnlineStoreConfig(backend="redis", **spec), fs)
    t0 = pd.Timestamp("2025-03-01", tz="UTC")
    batch = 0
    while True:
        n = 300
        ev = pd.DataFrame({
            "event_id": [f"b{batch}-{i}" for i in range(n)],
            "ts": [t0 + pd.Timedelta(seconds=batch * 1000 + i) for i in range(n)],
            "customer_key": [f"loyalty:{i % 25}" for i in range(n)],
            "channel": "store",
            "event_type": "purchase",
            "amount": 1.0,
        })
        report = store.apply_events(ev)
        print(json.dumps({"batch": batch, "applied": report.applied}), flush=True)
        batch += 1
    """
)


@pytest.mark.integration
def test_acknowledged_batches_survive_sigkill(tmp_path, opener):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    spec = json.dumps(opener.spec("child"))
    child = subprocess.Popen(
        [sys.executable, str(script), spec], stdout=subprocess.PIPE, text=True, env=env
    )
    acked: list[int] = []
    try:
        for line in child.stdout:
            ack = json.loads(line)
            assert ack["applied"] == 300
            acked.append(ack["batch"])
            if len(acked) == 6:
                child.send_signal(signal.SIGKILL)  # right after the ack, mid-way through the next
                break
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert acked == list(range(6))

    with opener("child") as s:
        complete = 0
        for b in range(len(acked) + 3):
            present = [s.is_applied(f"b{b}-{i}") for i in range(300)]
            assert all(present) or not any(present), f"batch {b} half applied"
            if b in acked:
                assert all(present), f"acknowledged batch {b} lost"
            complete += all(present)
        # the state holds exactly the complete batches: 300 purchases each
        counts = s.read_many(s.customer_ids(), T_US + 30 * DAY_US)["all_purchase_count"]
        assert counts.sum() == 300 * complete
        assert len(counts) == 25


class _CrashOnSecondWrite:
    """A connection that dies on the second bulk write of a batch, as a crash would."""

    def __init__(self, con):
        self._con, self.writes = con, 0

    def __getattr__(self, name):
        return getattr(self._con, name)

    def executemany(self, sql, rows):
        self.writes += 1
        if self.writes == 2:
            raise KeyboardInterrupt("simulated crash mid-batch")
        return self._con.executemany(sql, rows)


def test_a_batch_is_all_or_nothing(tmp_path):
    path = tmp_path / "online.db"
    with OnlineStore(path, FS) as s:
        s.apply_events(events(purchase("a", 0)))
        cid = s.resolve("loyalty:1")
        row = _state_row(s, cid)
        s._con = _CrashOnSecondWrite(s._con)
        with pytest.raises(KeyboardInterrupt):
            s.apply_events(events(purchase("b", 1), purchase("c", 2, key="loyalty:2")))
        s._con = s._con._con
    with OnlineStore(path, FS) as s:
        assert _state_row(s, cid) == row
        assert not s.is_applied("b") and not s.is_applied("c")
        assert s.resolve("loyalty:2") is None
        assert s.apply_events(events(purchase("b", 1))).applied == 1


def test_a_redis_batch_is_all_or_nothing(redis_config):
    """A process dying between its first queued write and EXEC leaves nothing of the batch."""
    with RedisOnlineStore(redis_config, FS) as s:
        s.apply_events(events(purchase("a", 0)))
        cid = s.resolve("loyalty:1")
        before = s._fetch(cid)
        queue = s._write

        def crash(pipe, plan):
            queue(pipe, plan)  # every write queued in the MULTI, then the process dies
            raise KeyboardInterrupt("simulated crash before EXEC")

        s._write = crash
        with pytest.raises(KeyboardInterrupt):
            s.apply_events(events(purchase("b", 1), purchase("c", 2, key="loyalty:2")))
    with RedisOnlineStore(redis_config, FS) as s:
        assert s._fetch(cid) == before
        assert not s.is_applied("b") and not s.is_applied("c")
        assert s.resolve("loyalty:2") is None and s.logged_events().empty
        assert s.apply_events(events(purchase("b", 1))).applied == 1


@pytest.mark.integration
def test_acknowledged_batches_survive_redis_killed_and_restarted(tmp_path):
    """redis-server killed with SIGKILL after acknowledged batches (appendfsync always) and
    started again on its append-only file: every acknowledged batch is there, exactly once."""
    server = RedisServer(tmp_path / "redis").start()
    cfg = OnlineStoreConfig(backend="redis", url=server.url, namespace="restart")
    try:
        with RedisOnlineStore(cfg, FS) as s:
            for b in range(5):
                batch = events(
                    *(purchase(f"r{b}-{i}", b + i / 100, f"loyalty:{i % 7}") for i in range(40))
                )
                assert s.apply_events(batch, log=True).applied == 40
            state = s.read_many(s.customer_ids(), T_US + 30 * DAY_US)
        server.kill()
        with pytest.raises(OnlineStoreUnavailable):
            RedisOnlineStore(cfg, FS)
        server.start()
        with RedisOnlineStore(cfg, FS) as s:
            assert all(s.is_applied(f"r{b}-{i}") for b in range(5) for i in range(40))
            again = s.read_many(s.customer_ids(), T_US + 30 * DAY_US)
            pd.testing.assert_frame_equal(again, state)
            assert again["all_purchase_count"].sum() == 200
            log = s.logged_events()
            assert len(log) == 200 and log["event_id"].is_unique
            assert list(log["seq"]) == list(range(1, 201))
            # re-sent after the restart: duplicates
            assert s.apply_events(events(purchase("r0-0", 0, "loyalty:0"))).by_reason == {
                DUPLICATE: 1
            }
    finally:
        server.stop()


def test_a_redis_store_without_an_append_only_file_is_refused(tmp_path, redis_config):
    server = RedisServer(tmp_path / "redis").start()
    try:
        redis.Redis(port=server.port).config_set("appendonly", "no")
        cfg = redis_config.model_copy(update={"url": server.url})
        with pytest.raises(OnlineStoreUnavailable, match="append-only file"):
            RedisOnlineStore(cfg, FS)
        with RedisOnlineStore(cfg.model_copy(update={"require_aof": False}), FS) as s:
            assert s.apply_events(events(purchase("a", 0))).applied == 1
    finally:
        server.stop()


def test_a_conditional_batch_commits_only_on_the_state_it_was_decided_on(store):
    """`expect` holds the state version a decision read: a change since then (another
    replica's event) rejects the whole batch as `conflict`; on the current version it applies."""
    store.apply_events(events(purchase("a", 0)))
    cid = store.resolve("loyalty:1")
    seen = store.read_row(cid, T_US + DAY_US).version
    sent = events(("s", 0.5, "loyalty:1", None, "sms", "sent", None, None))
    store.apply_events(events(purchase("b", 0.2)))  # someone else's write meanwhile
    late = store.apply_events(sent, expect={cid: seen})
    assert (late.applied, late.by_reason) == (0, {CONFLICT: 1})
    assert not store.is_applied("s")
    current = store.read_row(cid, T_US + DAY_US).version
    assert current != seen
    assert store.apply_events(sent, expect={cid: current}).applied == 1
    # a customer unknown when decided (version None) who appeared meanwhile: conflict too
    new = customer_id_of("loyalty:9")
    store.apply_events(events(purchase("c", 0.3, key="loyalty:9")))
    again = store.apply_events(events(purchase("d", 0.4, key="loyalty:9")), expect={new: None})
    assert again.by_reason == {CONFLICT: 1}


def test_concurrent_writers_of_the_same_customers_lose_nothing(opener):
    """Four writers (own connections) apply interleaved batches to the same five customers at
    once: every event is applied exactly once and the counts add up."""
    stores = [opener() for _ in range(4)]
    try:

        def write(w: int) -> int:
            applied = 0
            for b in range(15):
                rows = [
                    purchase(f"w{w}-{b}-{i}", (w * 15 + b) / 100 + i / 10_000, f"loyalty:{i % 5}")
                    for i in range(10)
                ]
                applied += stores[w].apply_events(events(*rows)).applied
            return applied

        with ThreadPoolExecutor(4) as pool:
            applied = sum(pool.map(write, range(4)))
        assert applied == 4 * 15 * 10
        s = stores[0]
        counts = s.read_many(s.customer_ids(), T_US + 30 * DAY_US)["all_purchase_count"]
        assert len(counts) == 5 and counts.sum() == 600 and (counts == 120).all()
    finally:
        for st in stores:
            st.close()


def test_duplicates_apply_once_within_and_across_batches(store):
    first = store.apply_events(events(purchase("a", 0), purchase("a", 0), purchase("b", 1)))
    assert (first.applied, first.n_rejected) == (2, 1)
    assert list(first.rejected["event_id"]) == ["a"]
    assert list(first.rejected["reason"]) == [DUPLICATE]
    # index labels may repeat (concatenated frames): rejected rows keep theirs
    second = store.apply_events(pd.concat([events(purchase("b", 1)), events(purchase("c", 2))]))
    assert list(second.rejected.index) == [0]
    assert (second.applied, list(second.rejected["reason"])) == (1, [DUPLICATE])
    feats = store.read(store.resolve("loyalty:1"), T_US + 3 * DAY_US)
    assert feats["all_purchase_count"] == 3.0 and feats["all_spend_sum"] == 30.0


def test_a_late_event_is_applied_as_if_it_had_come_in_time_order(opener):
    """Events older than the customer's last one (a channel's clock behind, a store's nightly
    upload) are accepted and give the features of the same events applied in time order:
    decayed sums, counts, last/first times, window counts, consent, a link on the late event."""
    timely = (
        purchase("a", 0),
        ("s1", 4.5, "loyalty:1", None, "email", "sent", None, None),
        ("cg", 4.6, "loyalty:1", None, "email", "consent_granted", None, None),
        purchase("b", 5),
    )
    late = (
        purchase("late", 2, amount=99.0),
        ("late2", 3, "email:new", "loyalty:1", "email", "open", None, None),
        ("s0", 4.4, "loyalty:1", None, "email", "sent", None, None),  # inside the 7-day window
        ("cr", 4.55, "loyalty:1", None, "email", "consent_revoked", None, None),  # before cg
        ("ancient", -400, "loyalty:1", None, "web", "visit", None, None),  # before any window
    )
    with (
        opener("late") as behind,
        opener("sorted") as ordered,
    ):
        behind.apply_events(events(*timely))
        report = behind.apply_events(events(*late))
        assert (report.applied, report.n_rejected) == (len(late), 0)
        ordered.apply_events(events(*timely, *late))
        assert (
            behind.resolve("email:new")
            == ordered.resolve("email:new")
            == behind.resolve("loyalty:1")
        )
        cid = behind.resolve("loyalty:1")
        for days in (5, 6, 9.5, 40):
            got, want = (
                behind.read(cid, T_US + int(days * DAY_US)),
                ordered.read(cid, T_US + int(days * DAY_US)),
            )
            assert got.keys() == want.keys()
            for name in want:
                np.testing.assert_allclose(
                    got[name], want[name], rtol=1e-9, atol=1e-12, err_msg=name
                )
        feats = behind.read(cid, T_US + 6 * DAY_US)
        assert feats["all_purchase_count"] == 3.0 and feats["all_spend_sum"] == 119.0
        assert feats["email_consent"] == 1.0  # given after the late revocation: still given
        assert feats["email_contact_count_7d"] == 2.0


def test_within_a_batch_events_are_applied_in_time_order(store):
    report = store.apply_events(events(purchase("b", 5), purchase("a", 0), purchase("c", 3)))
    assert report.applied == 3
    assert report.applied_ids == ("a", "c", "b")


def test_unknown_customer_reads_none(store):
    assert store.read("c_0000000000000000") is None
    assert store.resolve("email:nobody") is None
    store.apply_events(events(purchase("a", 0)))
    frame = store.read_many(["c_0000000000000000", store.resolve("loyalty:1")], T_US + DAY_US)
    assert list(frame["customer_id"]) == [store.resolve("loyalty:1")]


def test_unknown_identifier_creates_a_customer_named_like_batch_resolution(store):
    report = store.apply_events(events(purchase("a", 0, key="loyalty:77")))
    assert (report.new_customers, report.new_identifiers) == (1, 1)
    cid = store.resolve("loyalty:77")
    batch_id = duckdb.sql(f"SELECT {customer_id_sql(repr('loyalty:77'))}").fetchall()[0][0]
    assert cid == customer_id_of("loyalty:77") == batch_id
    assert store.read(cid, T_US + DAY_US)["all_purchase_count"] == 1.0
    assert store.customer_ids() == [cid]


def test_link_key_joins_a_new_identifier_to_a_known_customer(store):
    store.apply_events(events(purchase("a", 0, key="loyalty:1")))
    cid = store.resolve("loyalty:1")
    # a new identifier shown with a known one (a login, a loyalty card at the till)
    r = store.apply_events(events(("b", 1, "email:x", "loyalty:1", "email", "open", None, None)))
    assert (r.applied, r.new_customers, r.new_identifiers) == (1, 0, 1)
    assert store.resolve("email:x") == cid
    # later events keyed by the new identifier alone land on the same customer
    store.apply_events(events(("c", 2, "email:x", None, "email", "click", None, None)))
    feats = store.read(cid, T_US + 3 * DAY_US)
    assert feats["email_engagement_decayed_7d"] > 1.5
    # a known key with a new link_key: the link_key joins it
    store.apply_events(events(("d", 3, "loyalty:1", "device:z", "store", "purchase", 1.0, None)))
    assert store.resolve("device:z") == cid
    # two unknown identifiers together: one new customer named by the smaller one
    store.apply_events(events(("e", 4, "phone:9", "crm:5", "sms", "click", None, None)))
    assert store.resolve("phone:9") == store.resolve("crm:5") == customer_id_of("crm:5")
    # two known, different customers: no online merge, counted for batch resolution
    r = store.apply_events(events(("f", 5, "email:x", "crm:5", "email", "open", None, None)))
    assert (r.applied, r.unmerged_links) == (1, 1)
    assert store.resolve("crm:5") != cid


def test_every_event_is_applied_or_rejected_with_a_reason(store):
    store.apply_events(events(purchase("old", 10)))
    batch = events(
        purchase("ok1", 11),
        ("ok2", 12, "email:a", "crm:1", "email", "sent", None, None),
        purchase(None, 11),
        purchase("k0", 11, key="  "),
        purchase("k1", 11, key="nokey"),
        ("k2", 11, "email:a", "bogus:1", "email", "open", None, None),
        ("c0", 11, "email:a", None, "fax", "open", None, None),
        ("t0", 11, "email:a", None, "email", "teleport", None, None),
        purchase("ts0", None),
        purchase("ts1", "not a time"),
        purchase("ts2", pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=2)),
        purchase("dup", 11),
        purchase("dup", 11),
        purchase("late", 1),  # older than "old": applied (late events are not rejected)
    )
    batch["amount"] = batch["amount"].astype(object)  # amounts as text, as a CSV may give them
    batch.loc[batch["event_id"] == "ok1", "amount"] = "12.5"
    batch.loc[batch["event_id"] == "k0", "amount"] = "abc"  # earlier reason wins
    amt = events(purchase("amt", 11)).astype({"amount": object})
    amt["amount"] = "abc"
    batch = pd.concat([batch, amt]).reset_index(drop=True)
    report = store.apply_events(batch)
    assert report.applied + report.n_rejected == report.received == len(batch)
    reasons = dict(
        zip(report.rejected["event_id"].fillna("<none>"), report.rejected["reason"], strict=True)
    )
    assert reasons == {
        "<none>": MISSING_EVENT_ID,
        "k0": EMPTY_CUSTOMER_KEY,
        "k1": MALFORMED_CUSTOMER_KEY,
        "k2": MALFORMED_LINK_KEY,
        "c0": UNKNOWN_CHANNEL,
        "t0": UNKNOWN_EVENT_TYPE,
        "ts0": MISSING_TIMESTAMP,
        "ts1": UNPARSEABLE_TIMESTAMP,
        "ts2": FUTURE_TIMESTAMP,
        "amt": NON_NUMERIC_AMOUNT,
        "dup": DUPLICATE,
    }
    assert sorted(report.applied_ids) == ["dup", "late", "ok1", "ok2"]
    assert sum(report.by_reason.values()) == report.n_rejected
    assert list(report.rejected.columns) == [*batch.columns, "reason"]
    assert report.rejected.index.isin(batch.index).all()
    feats = store.read(store.resolve("loyalty:1"), T_US + 20 * DAY_US)
    assert feats["all_spend_sum"] == 10.0 + 12.5 + 10.0 + 10.0  # old, ok1 (text), dup once, late


def test_store_written_with_other_definitions_refuses_to_open(opener):
    with opener() as s:
        s.apply_events(events(purchase("a", 0)))
    other = FeatureSet(DataConfig(), FeatureConfig(half_lives_days=[7.0, 30.0]))
    with pytest.raises(DefinitionMismatch, match="other feature definitions.*re-materialise"):
        opener(fs=other)
    # the refusal left the store as it was
    with opener() as s:
        assert s.resolve("loyalty:1") is not None
    # a derived-only change (priors) keeps the state usable
    priors = FeatureSet(DataConfig(), FeatureConfig(rate_prior_strength=3.0))
    with opener(fs=priors) as s:
        assert s.resolve("loyalty:1") is not None
    with opener(fs=other, reset=True) as s:
        assert s.resolve("loyalty:1") is None and s.customer_ids() == []


def test_reading_before_the_state_time_is_refused_and_now_is_the_default(store):
    store.apply_events(events(purchase("a", 0)))
    cid = store.resolve("loyalty:1")
    with pytest.raises(ValueError, match="batch engine"):
        store.read(cid, T_US - 1)
    now = store.read(cid)
    assert now["all_purchase_days_since"] > 0
    assert np.isclose(
        now["all_purchase_days_since"],
        (pd.Timestamp.now(tz="UTC") - T) / pd.Timedelta(days=1),
        atol=0.01,
    )


def test_records_path_agrees_with_the_frame_path(opener):
    """apply_records (JSON objects, no pandas) gives the state apply_events gives."""
    frame = events(
        purchase("a", 0, amount=12.5),
        ("b", 1, "email:x", "loyalty:1", "email", "open", None, None),
        ("c", 2, "email:x", None, "email", "click", None, None),
        purchase("bad", 3, key="nokey"),
    )
    records = [
        {k: v for k, v in row.items() if v is not None and v == v}
        for row in frame.to_dict("records")
    ]
    for r in records:
        r["ts"] = r["ts"].isoformat()  # as JSON carries it
    records[0]["amount"] = "12.5"
    with opener("a") as a, opener("b") as b:
        ra, rb = a.apply_events(frame), b.apply_records(records)
        assert (
            (ra.applied, ra.by_reason)
            == (rb.applied, rb.by_reason)
            == (
                3,
                {MALFORMED_CUSTOMER_KEY: 1},
            )
        )
        assert list(rb.rejected["event_id"]) == ["bad"]
        cid = a.resolve("email:x")
        assert cid == b.resolve("email:x") == a.resolve("loyalty:1")
        np.testing.assert_equal(a.read(cid, T_US + 5 * DAY_US), b.read(cid, T_US + 5 * DAY_US))
        bad = b.apply_records([{"event_id": "z", "ts": "yesterday-ish", "customer_key": "crm:1"}])
        assert bad.by_reason == {UNKNOWN_CHANNEL: 1}
        bad = b.apply_records(
            [{**records[0], "event_id": "z", "ts": "yesterday-ish"}, {**records[0], "ts": None}]
        )
        assert bad.by_reason == {MISSING_TIMESTAMP: 1, UNPARSEABLE_TIMESTAMP: 1}


def test_forgetting_old_ids_keeps_replays_duplicates(store):
    store.apply_events(events(purchase("a", 0), purchase("b", 2)))
    assert store.forget_applied_before(T_US + DAY_US) == 1
    assert not store.is_applied("a") and store.is_applied("b")
    again = store.apply_events(events(purchase("a", 0), purchase("b", 2), purchase("c", 3)))
    assert (again.applied, list(again.rejected["reason"])) == (1, [DUPLICATE, DUPLICATE])
    assert store.read(store.resolve("loyalty:1"), T_US + 4 * DAY_US)["all_purchase_count"] == 3


def test_single_read_path_uses_no_pandas(store, monkeypatch):
    """The serving path: one indexed lookup (SQLite) or one round trip (Redis) and numpy, no
    DataFrame (sub-millisecond)."""
    import features.store.online_store as module
    import features.store.redis_online_store as redis_module

    store.apply_events(events(purchase("a", 0)))
    cid = store.resolve("loyalty:1")

    class NoPandas:
        def __getattr__(self, name):
            raise AssertionError(f"pandas.{name} used on the single-read path")

    monkeypatch.setattr(module, "pd", NoPandas())
    monkeypatch.setattr(redis_module, "pd", NoPandas())
    assert store.read(cid, T_US + DAY_US)["all_purchase_count"] == 1.0
    assert store.read("c_0000000000000000") is None
