"""The service as a channel meets it: `nba serve` as a process, called over HTTP.

Every test uses customers of its own (from the end of the sorted ids: the parity test takes the
first 200), because they share one running service and its online store.
"""

from __future__ import annotations

import shutil
import uuid

import numpy as np
import pytest
from service_process import (
    new_id,
    now_iso,
    recommend,
    start_service,
)

from features.config import DataConfig
from features.ingest.contract import DataDir
from features.ingest.event_store import open_store
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.online_store import OnlineStore

pytestmark = pytest.mark.integration
FS = FeatureSet(DataConfig(), FeatureConfig())


@pytest.fixture(scope="module")
def keys(online_world) -> list[str]:
    """One e-mail identifier per customer, customers from the end of the sorted ids."""
    rows = online_world.con.execute(
        "SELECT customer_id, min(identifier) FROM identity WHERE identifier LIKE 'email:%' "
        "GROUP BY customer_id ORDER BY customer_id DESC LIMIT 600"
    ).fetchall()
    return [r[1] for r in rows]


def first_with(svc, keys: list[str], channel: str, used: set[str]) -> tuple[str, dict]:
    """A customer (not used by another test) with an allowed action on `channel`."""
    for key in keys:
        if key in used:
            continue
        answer = recommend(svc, key)
        if any(a["channel"] == channel for a in answer["actions"]):
            used.add(key)
            return key, answer
    pytest.fail(f"no customer of the test world has an allowed {channel} action")


USED: set[str] = set()


def test_recommend_answers_ranked_actions_with_components_reasons_and_versions(served_world, keys):
    answer = recommend(served_world, keys[0], k=3)
    USED.add(keys[0])
    assert answer["customer"]["known"] and answer["customer"]["key"] == keys[0]
    assert 1 <= len(answer["actions"]) <= 3
    scores = [a["score"] for a in answer["actions"]]
    assert scores == sorted(scores, reverse=True)
    assert answer["decision_id"].startswith("d-")
    assert answer["model_version"] and answer["policy_version"].startswith("policy-")
    assert 0 < answer["propensity"] <= 1
    chosen = [a for a in answer["actions"] if a["chosen"]]
    assert chosen and chosen[0]["action_id"] == answer["action_id"]
    for a in answer["actions"]:
        if a["action_id"] != "do_nothing":
            c = a["components"]
            assert 0 <= c["p_purchase_control"] <= 1 and 0 <= c["p_purchase_treated"] <= 1
            assert 1 <= len(a["reasons"]) <= 3
    assert answer["reasons"]


def test_an_unknown_customer_gets_a_cold_start_answer_not_an_error(served_world):
    answer = recommend(served_world, f"email:{uuid.uuid4().hex}")
    assert answer["customer"]["known"] is False
    assert answer["action_id"] == "do_nothing" and answer["outcome"] == "nothing"
    assert answer["reasons"]


def test_events_need_the_bearer_token(served_world, keys):
    event = {
        "event_id": new_id(),
        "ts": now_iso(),
        "customer_key": keys[1],
        "channel": "web",
        "event_type": "visit",
    }
    assert served_world.post("/events", {"events": [event]}, token=None).status_code == 401
    wrong = served_world.post("/events", {"events": [event]}, token="not-the-token")
    assert wrong.status_code == 401 and "token" in wrong.json()["error"]
    right = served_world.post("/events", {"events": [event]})
    assert right.status_code == 200 and right.json()["accepted"] == 1


def test_a_resent_batch_changes_nothing(served_world, keys, online_world):
    key = keys[2]
    USED.add(key)
    batch = [
        {
            "event_id": new_id(),
            "ts": now_iso(),
            "customer_key": key,
            "channel": "store",
            "event_type": "purchase",
            "amount": 25.0,
        },
        {"event_id": new_id(), "ts": now_iso(), "customer_key": key, "channel": "email"},
        {
            "event_id": new_id(),
            "ts": now_iso(),
            "customer_key": key,
            "channel": "web",
            "event_type": "visit",
        },
    ]
    first = served_world.post("/events", {"events": batch}).json()
    assert (first["received"], first["accepted"], first["rejected"]) == (3, 2, 1)
    assert first["results"][1]["reason"] == "unknown_event_type"
    store = OnlineStore(online_world.data_dir.online_store, FS)
    try:
        cid = store.resolve(key)
        before = store.read(cid)["all_purchase_count"]
        again = served_world.post("/events", {"events": batch}).json()
        assert again["accepted"] == 0 and again["by_reason"] == {
            "duplicate": 2,
            "unknown_event_type": 1,
        }
        assert store.read(cid)["all_purchase_count"] == before
        log = store.logged_events()
        assert (log["event_id"].isin([e["event_id"] for e in batch])).sum() == 2
    finally:
        store.close()


def test_consent_revoked_through_events_stops_that_channel_at_the_next_recommend(
    served_world, keys
):
    key, _ = first_with(served_world, keys[3:], "email", USED)
    event = {
        "event_id": new_id(),
        "ts": now_iso(),
        "customer_key": key,
        "channel": "email",
        "event_type": "consent_revoked",
    }
    assert served_world.post("/events", {"events": [event]}).json()["accepted"] == 1
    after = recommend(served_world, key)
    assert not [a for a in after["actions"] if a["channel"] == "email"]


def test_a_sent_counts_against_the_cap_at_once(served_world, keys):
    # the default policy caps SMS at 1 contact in 7 days
    key, _ = first_with(served_world, keys[3:], "sms", USED)
    event = {
        "event_id": new_id(),
        "ts": now_iso(),
        "customer_key": key,
        "channel": "sms",
        "event_type": "sent",
        "action_id": "sms_flash",
        "propensity": 0.9,
    }
    assert served_world.post("/events", {"events": [event]}).json()["accepted"] == 1
    after = recommend(served_world, key)
    assert not [a for a in after["actions"] if a["channel"] == "sms"]


def test_score_decides_many_customers_through_the_batch_path(served_world, keys):
    wanted = [*keys[-5:], f"email:{uuid.uuid4().hex}"]
    r = served_world.post("/score", {"customers": wanted, "explain": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["customer"]["key"] for d in body["decisions"]] == wanted
    assert [d["customer"]["known"] for d in body["decisions"]] == [True] * 5 + [False]
    assert body["decisions"][-1]["action_id"] == "do_nothing"


def test_operations_endpoints(served_world):
    assert served_world.get("/healthz").status_code == 200
    assert served_world.get("/readyz").status_code == 200
    metrics = served_world.get("/metrics").text
    assert "request_duration_seconds" in metrics and 'endpoint="/recommend"' in metrics
    spec = served_world.get("/docs.json").json()
    assert {"/recommend", "/events", "/score"} <= set(spec["paths"])


def test_no_acknowledged_event_is_lost_when_the_service_is_killed(online_world, tmp_path):
    """kill -9 at a random moment while two clients post event batches, twice: after each kill
    every acknowledged event is in the log exactly once and a batch whose answer never came
    is there whole or not at all; resent after the restart, it is exactly once too. Ingested,
    each acknowledged event is in the event store exactly once, and the online features equal a
    batch recomputation over the event store as of the same moment."""
    from kill_under_load import (
        Ledger,
        check_round,
        check_stores,
        load_then_kill,
        loyalty_keys,
        resend_unanswered,
    )

    root = tmp_path / "world"
    shutil.copytree(
        online_world.data_dir.root,
        root,
        ignore=shutil.ignore_patterns("online.sqlite*", "service-*.log", "decisions"),
    )
    data_dir = DataDir(root)
    con = open_store(data_dir)
    with OnlineStore(data_dir.online_store, FS) as store:
        store.materialize(con, as_of=online_world.end)
    con.close()
    keys = loyalty_keys(data_dir, 40)
    rng = np.random.default_rng(0)
    ledger = Ledger()
    for kill in range(2):
        svc = start_service(root)
        resend_unanswered(svc, ledger)
        sent = load_then_kill(svc, keys, float(rng.uniform(1.0, 3.0)), seed=10 * kill)
        found = check_round(data_dir, sent, ledger)
        assert found.acknowledged_events > 0 and found.batches > found.unanswered_batches
    check_stores(data_dir, ledger)


def test_the_service_refuses_to_start_without_what_it_needs(tmp_path, online_world):
    import subprocess

    from service_process import NBA

    def serve(data, env_token: str | None):
        env = {k: v for k, v in __import__("os").environ.items() if k != "NBA_API_TOKEN"}
        if env_token:
            env["NBA_API_TOKEN"] = env_token
        return subprocess.run(
            [NBA, "serve", "--data", str(data)], env=env, capture_output=True, text=True
        )

    no_token = serve(online_world.data_dir.root, None)
    assert no_token.returncode == 2 and "NBA_API_TOKEN" in no_token.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    no_store = serve(empty, "t")
    assert no_store.returncode == 2 and "online store" in no_store.stderr
    assert len(no_store.stderr.strip().splitlines()) == 1
