"""`nba serve` killed with SIGKILL while event batches are in flight, and what must hold after:
every acknowledged event exactly once in the online store's log and, after ingest, in the event
store; a batch whose answer never came back applied whole or not at all (resent, it is then
exactly once too); the online features equal a batch recomputation as of the same moment.

Shared by the default suite (tests/test_serving/test_service.py: two kills) and the repeated run
(benchmarks/kill_restart.py).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from service_process import ServiceProcess, assert_same_features, random_events

from features.config import DataConfig
from features.ingest.contract import CUSTOMER_ID, DataDir
from features.ingest.event_store import ingest, open_store
from features.store.batch import AS_OF, BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.online_store import OnlineStore

FS = FeatureSet(DataConfig(), FeatureConfig())
KINDS = [("store", "purchase"), ("web", "visit"), ("email", "open"), ("email", "sent")]


@dataclass
class Batch:
    """One POST /events as sent; `acknowledged` once its 200 came back with every row accepted."""

    events: list[dict]
    acknowledged: bool = False

    @property
    def ids(self) -> list[str]:
        return [e["event_id"] for e in self.events]


class EventSender(threading.Thread):
    """Posts batches of fresh events (random kinds, `keys`) to a service, one after the other,
    until stopped or until the service stops answering (killed under it)."""

    def __init__(self, svc: ServiceProcess, keys: list[str], size: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.svc, self.keys, self.size = svc, keys, size
        self.rng = np.random.default_rng(seed)
        self.batches: list[Batch] = []
        self.refused: list[str] = []  # answers that were not a full acknowledgement
        self._stop_asked = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.svc.token}"}
        with httpx.Client(timeout=30, headers=headers) as client:
            while not self._stop_asked.is_set():
                batch = Batch(random_events(self.rng, self.keys, KINDS, self.size))
                self.batches.append(batch)
                try:
                    r = client.post(self.svc.url + "/events", json={"events": batch.events})
                except httpx.HTTPError:
                    return  # the service is gone: this batch's fate is unknown to the sender
                if r.status_code == 200 and r.json().get("accepted") == len(batch.events):
                    batch.acknowledged = True
                else:
                    self.refused.append(f"{r.status_code}: {r.text[:200]}")

    def stop(self) -> None:
        self._stop_asked.set()


@dataclass
class Ledger:
    """Every batch sent across the kills: what the clients know."""

    batches: list[Batch] = field(default_factory=list)

    @property
    def acknowledged(self) -> list[str]:
        return [i for b in self.batches if b.acknowledged for i in b.ids]

    @property
    def unanswered(self) -> list[Batch]:
        return [b for b in self.batches if not b.acknowledged]


@dataclass(frozen=True)
class Round:
    """What one kill left, as found in the online store's log before the restart."""

    batches: int
    acknowledged_events: int
    unanswered_batches: int
    unanswered_applied: int  # of those, applied whole (the rest: not at all)


def load_then_kill(
    svc: ServiceProcess,
    keys: list[str],
    seconds: float,
    seed: int,
    senders: int = 2,
    size: int = 20,
) -> list[Batch]:
    """`senders` clients post batches for `seconds`, then the service is killed with SIGKILL
    (its workers too) while they are still sending; returns every batch sent."""
    shares = [keys[i::senders] for i in range(senders)]  # disjoint customers per client
    threads = [EventSender(svc, share, size, seed + i) for i, share in enumerate(shares)]
    for t in threads:
        t.start()
    threads[0].join(timeout=seconds)
    svc.kill()
    for t in threads:
        t.stop()
        t.join(timeout=60)
    refused = [r for t in threads for r in t.refused]
    assert not refused, f"batches refused while the service was up: {refused[:3]}"
    return [b for t in threads for b in t.batches]


def logged_counts(data_dir: DataDir) -> Counter:
    """How many times each test event id is in the online store's event log."""
    with OnlineStore(data_dir.online_store, FS) as store:
        log = store.logged_events()
    return Counter(log["event_id"])


def check_round(data_dir: DataDir, sent: list[Batch], ledger: Ledger) -> Round:
    """After a kill (service down): every acknowledged event so far exactly once in the log,
    each unanswered batch of this round there whole or not at all, nothing never sent."""
    counts = logged_counts(data_dir)
    ledger.batches += sent
    acked = ledger.acknowledged
    wrong = {i: counts.get(i, 0) for i in acked if counts.get(i, 0) != 1}
    assert not wrong, f"{len(wrong)} acknowledged events not exactly once in the log: {wrong}"
    applied = 0
    for b in (b for b in sent if not b.acknowledged):
        present = [counts.get(i, 0) for i in b.ids]
        assert set(present) in ({0}, {1}), f"an unanswered batch is half-applied: {present}"
        applied += present[0] == 1
    sent_ids = {i for b in ledger.batches for i in b.ids}
    unknown = [i for i in counts if str(i).startswith("test-") and i not in sent_ids]
    assert not unknown, f"events in the log that no client sent: {unknown[:5]}"
    acknowledged = sum(len(b.events) for b in sent if b.acknowledged)
    return Round(len(sent), acknowledged, sum(not b.acknowledged for b in sent), applied)


def resend_unanswered(svc: ServiceProcess, ledger: Ledger) -> int:
    """What a channel does after a timeout: send the unanswered batches again (same event ids);
    each event is then accepted or a duplicate, and the batch acknowledged. Returns duplicates."""
    duplicates = 0
    for b in ledger.unanswered:
        r = svc.post("/events", {"events": b.events})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["accepted"] + answer["by_reason"].get("duplicate", 0) == len(b.events), answer
        duplicates += answer["by_reason"].get("duplicate", 0)
        b.acknowledged = True
    return duplicates


@dataclass(frozen=True)
class Final:
    """The end state: event store and features checked against the log."""

    acknowledged: int
    in_log_once: int
    in_store_once: int
    customers_compared: int


def check_stores(data_dir: DataDir, ledger: Ledger) -> Final:
    """Service down: every acknowledged event exactly once in the log and, after ingest, in the
    event store (no other test event there); the online features of every customer touched equal
    the batch engine's over the event store as of the same moment."""
    acked = ledger.acknowledged
    with OnlineStore(data_dir.online_store, FS) as store:
        log = store.logged_events()
        counts = Counter(log["event_id"])
        assert all(counts.get(i, 0) == 1 for i in acked)
        touched = sorted(set(log[CUSTOMER_ID]))
        t = pd.Timestamp.now(tz="UTC")
        t_us = (t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
        online = pd.DataFrame([store.read(c, t_us) for c in touched])

    ingest(data_dir, DataConfig(), progress=False)
    con = open_store(data_dir)
    try:
        stored = con.execute(
            "SELECT event_id, count(*) AS n FROM events WHERE event_id LIKE 'test-%' "
            "GROUP BY event_id"
        ).df()
        in_log = {i for i in counts if str(i).startswith("test-")}
        assert set(stored["event_id"]) == in_log, (
            "the event store's test events differ from the log"
        )
        assert stored["n"].eq(1).all(), "an event is in the event store more than once"
        assert set(acked) <= in_log
        engine = BatchEngine(FS, con, customers="customers")
        query = pd.DataFrame({CUSTOMER_ID: touched, AS_OF: [t] * len(touched)})
        batch = engine.at(query).reset_index(drop=True)
    finally:
        con.close()
    assert_same_features(online, batch, FS.names)
    return Final(len(acked), sum(counts.get(i, 0) == 1 for i in acked), len(stored), len(touched))


def loyalty_keys(data_dir: DataDir | Path, n: int) -> list[str]:
    """One loyalty identifier each of the first n customers of the event store."""
    con = open_store(data_dir)
    try:
        rows = con.execute(
            "SELECT min(identifier) FROM identity WHERE identifier LIKE 'loyalty:%' "
            f"GROUP BY customer_id ORDER BY 1 LIMIT {int(n)}"
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]
