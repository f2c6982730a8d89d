"""Two replicas of the service sharing one Redis online store, as a deployment runs them: two
`nba serve` processes on different ports, one Debian redis-server, called over HTTP.

An event accepted by one replica is in the other's next decision; contact caps hold when both
decide for the same customers at once; a replica killed with SIGKILL loses nothing it
acknowledged, and the shared store then equals a batch recomputation.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from service_process import (
    NBA,
    assert_same_features,
    new_id,
    now_iso,
    random_events,
    recommend,
    start_service,
)

from features.config import DataConfig, OnlineStoreConfig
from features.ingest.contract import CUSTOMER_ID, DataDir
from features.ingest.event_store import ingest, open_store
from features.store.batch import AS_OF, BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.redis_online_store import RedisOnlineStore
from serving.config import PolicyConfig

pytestmark = pytest.mark.integration
FS = FeatureSet(DataConfig(), FeatureConfig())
CAPS = PolicyConfig().contact_policy.caps
WEEK_CAPS = {c.channel: c.max_contacts for c in CAPS if c.window_days == 7}


@pytest.fixture(scope="module")
def shared(online_world, redis_server, tmp_path_factory):
    """A copy of the online world whose online store is a namespace of the Redis, materialised
    by `nba features --materialize` with the configuration the replicas read."""
    root = tmp_path_factory.mktemp("replicas") / "world"
    shutil.copytree(
        online_world.data_dir.root,
        root,
        ignore=shutil.ignore_patterns("online.sqlite*", "service-*.log", "decisions"),
    )
    namespace = f"replicas-{uuid.uuid4().hex[:8]}"
    # local midday for the customers: quiet hours would silence SMS and push in the evening
    offset = (12 - pd.Timestamp.now(tz="UTC").hour + 12) % 24 - 12
    config = root / "replicas.yaml"
    config.write_text(
        f"online_store:\n  backend: redis\n  url: {redis_server.url}\n  namespace: {namespace}\n"
        f"policy:\n  contact_policy:\n    quiet_hours:\n      utc_offset_hours: {offset}\n"
    )
    done = subprocess.run(
        [NBA, "features", "--data", str(root), "--config", str(config), "--materialize"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert not DataDir(root).online_store.exists()  # the replicas can only share the Redis
    cfg = OnlineStoreConfig(backend="redis", url=redis_server.url, namespace=namespace)
    return root, config, cfg


@pytest.fixture(scope="module")
def replicas(shared):
    root, config, _ = shared
    a = start_service(root, config=config)
    b = start_service(root, config=config)
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def email_keys(online_world) -> list[str]:
    rows = online_world.con.execute(
        "SELECT min(identifier) FROM identity WHERE identifier LIKE 'email:%' "
        "GROUP BY customer_id ORDER BY customer_id LIMIT 400"
    ).fetchall()
    return [r[0] for r in rows]


def test_an_event_accepted_by_one_replica_is_in_the_next_decision_of_the_other(
    replicas, email_keys
):
    a, b = replicas
    for key in email_keys[:60]:
        view = b.get(f"/customers/{key}").json()  # a preview: records nothing
        if any(x["channel"] == "email" for x in view["recommendation"]["actions"]):
            break
    else:
        pytest.fail("no customer of the test world has an allowed e-mail action")
    revoke = {
        "event_id": new_id(),
        "ts": now_iso(),
        "customer_key": key,
        "channel": "email",
        "event_type": "consent_revoked",
    }
    assert a.post("/events", {"events": [revoke]}).json()["accepted"] == 1
    after = recommend(b, key)
    assert not [x for x in after["actions"] if x["channel"] == "email"]
    # and B's 360 view shows the event A accepted
    timeline = b.get(f"/customers/{key}?timeline=5").json()["timeline"]
    assert revoke["event_id"] in [e["event_id"] for e in timeline]


def test_contact_caps_hold_when_two_replicas_decide_for_the_same_customers_at_once(
    replicas, shared, email_keys
):
    """Sixteen requests at once per customer, alternating between the replicas: the contacts
    answered never take a customer past a cap, and each one answered is recorded once."""
    a, b = replicas
    _, _, cfg = shared
    keys = email_keys[100:112]
    names = [f"{c or 'all'}_contact_count_7d" for c in WEEK_CAPS]
    with RedisOnlineStore(cfg, FS) as store:
        ids = [store.resolve(k) for k in keys]
        before = store.read_many(ids)[[CUSTOMER_ID, *names]].set_index(CUSTOMER_ID)

    jobs = [(key, (a, b)[i % 2]) for key in keys for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: recommend(job[1], job[0], k=3), jobs))
    contacts = pd.DataFrame(
        [
            {CUSTOMER_ID: x["customer"]["customer_id"], "channel": x["channel"]}
            for x in answers
            if x["outcome"] == "contact"
        ]
    )
    assert len(contacts) > len(keys)  # the race was real: customers got several contacts

    with RedisOnlineStore(cfg, FS) as store:
        after = store.read_many(ids)[[CUSTOMER_ID, *names]].set_index(CUSTOMER_ID)
        log = store.logged_events()
    answered = {x["decision_id"] for x in answers if x["outcome"] == "contact"}
    sent = log[log["event_type"] == "sent"]
    assert answered <= set(sent["event_id"]) and sent["event_id"].is_unique
    for channel, cap in WEEK_CAPS.items():
        name = f"{channel or 'all'}_contact_count_7d"
        mine = contacts if channel is None else contacts[contacts["channel"] == channel]
        got = mine.groupby(CUSTOMER_ID).size().reindex(ids, fill_value=0)
        # every answered contact is counted, and no customer went past the cap through them
        assert (after[name] - before[name]).reindex(ids).eq(got).all(), name
        assert (before[name].reindex(ids) + got <= np.maximum(cap, before[name])).all(), name


def test_a_replica_killed_loses_nothing_it_acknowledged(replicas, shared, email_keys):
    """Events sent to both replicas, one killed with SIGKILL right after its acknowledgements
    and started again: every acknowledged event is in the shared log exactly once, and the
    online features equal a batch recomputation over the ingested event store."""
    root, config, cfg = shared
    a, b = replicas
    keys = email_keys[200:230]
    rng = np.random.default_rng(3)
    kinds = [("store", "purchase"), ("web", "visit"), ("email", "open")]
    acknowledged: list[str] = []
    victim = start_service(root, config=config)
    try:
        for svc in (victim, b, victim, a):
            events = random_events(rng, keys, kinds, 25)
            assert svc.post("/events", {"events": events}).json()["accepted"] == len(events)
            acknowledged += [e["event_id"] for e in events]
        victim.kill()
        victim = start_service(root, config=config)
        assert victim.post("/events", {"events": events}).json()["accepted"] == 0  # duplicates
    finally:
        victim.stop()

    with RedisOnlineStore(cfg, FS) as store:
        log = store.logged_events()
        assert log["event_id"].value_counts().reindex(acknowledged).eq(1).all()
        touched = sorted(set(log.loc[log["event_id"].isin(acknowledged), CUSTOMER_ID]))
        t = pd.Timestamp.now(tz="UTC")
        t_us = (t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
        online = pd.DataFrame([store.read(c, t_us) for c in touched])

    data_dir = DataDir(root)
    ingest(data_dir, DataConfig(), progress=False, online=cfg)  # the log joins the event store
    con = open_store(data_dir)
    stored = con.execute(
        "SELECT event_id, count(*) AS n FROM events WHERE event_id LIKE 'test-%' GROUP BY 1"
    ).df()
    assert set(acknowledged) <= set(stored["event_id"]) and stored["n"].eq(1).all()
    query = pd.DataFrame({CUSTOMER_ID: touched, AS_OF: [t] * len(touched)})
    batch = BatchEngine(FS, con, customers="customers").at(query).reset_index(drop=True)
    con.close()
    assert_same_features(online, batch, FS.names)


def test_the_service_refuses_a_redis_it_cannot_reach(shared, tmp_path):
    root, _, _ = shared
    config = tmp_path / "nowhere.yaml"
    config.write_text("online_store:\n  backend: redis\n  url: redis://127.0.0.1:1/0\n")
    done = subprocess.run(
        [NBA, "serve", "--data", str(root), "--config", str(config)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NBA_API_TOKEN": "t"},
    )
    assert done.returncode == 2, done.stderr
    assert "cannot reach the online store's Redis" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
