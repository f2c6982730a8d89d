"""The real-time path against the batch path: one policy, the same decision for the same customer
at the same moment, whether from the batch engine's frame or the online store's arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.config import DataConfig
from features.ingest.contract import CUSTOMER_ID
from features.store.batch import AS_OF
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.online_store import OnlineStore
from serving.config import PolicyConfig
from serving.policy import DecisionPolicy
from serving.realtime import FeatureListMismatch, RealtimeDecider

COMPONENTS = ["score", "p_response", "p_purchase_treated", "p_purchase_control", "value"]
FS = FeatureSet(DataConfig(), FeatureConfig())


@pytest.fixture(scope="module")
def decider(online_world):
    r = online_world.result
    policy = DecisionPolicy(r.bundle, r.version or "test", PolicyConfig(), DataConfig())
    store = OnlineStore(online_world.data_dir.online_store, FS)
    yield RealtimeDecider(policy, store)
    store.close()


def test_real_time_decisions_equal_the_batch_path_for_200_customers(online_world, decider):
    """The batch engine's frame over the event store, decided together, against each customer's
    online-store row decided alone through arrays: same actions, components and reasons."""
    ids = sorted(online_world.features[CUSTOMER_ID])[:200]  # tests of the service use others
    t = online_world.end
    t_us = (t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    query = pd.DataFrame({CUSTOMER_ID: ids, AS_OF: [t] * len(ids)})
    frame = pd.concat([query, online_world.engine.at(query)], axis=1)
    batch = decider.policy.decide(frame, as_of=t, immediate=True).table

    for i, cid in enumerate(ids):
        row = decider.row(decider.customer(cid), t_us)
        one = decider.decide(decider.arrays(row), row.as_of_us).record(0)
        expected = batch.iloc[i]
        assert one["action_id"] == expected["action_id"], cid
        for c in COMPONENTS:
            np.testing.assert_allclose(one[c], expected[c], rtol=1e-9, atol=1e-12, err_msg=c)
        assert one["propensity"] == expected["propensity"]
        for k in (1, 2, 3):
            assert one[f"reason_{k}"] == expected[f"reason_{k}"], (cid, k)
    assert batch["action_id"].nunique() > 2, "the comparison should cover several actions"


def test_recommend_gives_the_decision_the_policy_gives_with_its_reasons(online_world, decider):
    """`recommend` explains the chosen and the ranked actions in one call of its own: the decision
    it logs carries the same action and reasons as the policy's decision, and every recommended
    action its own reasons."""
    ids = sorted(online_world.features[CUSTOMER_ID])[:60]
    t_us = (online_world.end - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    by_policy = RealtimeDecider(decider.policy, decider.store)  # fresh: the same random stream
    by_recommend = RealtimeDecider(decider.policy, decider.store)
    explained = 0
    for cid in ids:
        row = by_policy.row(by_policy.customer(cid), t_us)
        expected = by_policy.decide(by_policy.arrays(row), row.as_of_us).record(0)
        rec = by_recommend.recommend(cid, "web", k=5, explain=True, as_of_us=t_us)
        assert rec.decision["action_id"] == expected["action_id"], cid
        assert rec.decision["reasons_from"] == expected["reasons_from"], cid
        held_out = rec.decision["logged_as"] == "holdout"  # its first reason says so instead
        for k in (2, 3) if held_out else (1, 2, 3):
            assert rec.decision[f"reason_{k}"] == expected[f"reason_{k}"], (cid, k)
        for action in rec.actions:
            assert 1 <= len(action["reasons"]) <= 3, (cid, action["action_id"])
            if action["action_id"] == expected["action_id"] != "do_nothing":
                assert action["reasons"] == [expected[f"reason_{k}"] for k in (1, 2, 3)]
            explained += action["action_id"] != "do_nothing"
    assert explained > len(ids), "several actions per customer should have been explained"


def test_an_unknown_customer_gets_a_cold_start_answer(decider):
    rec = decider.recommend("email:nobody-has-this-address", "web", k=5)
    assert not rec.customer.known
    # no consent on record: nothing that needs consent may be chosen
    assert all(a["action_id"] == "do_nothing" for a in rec.actions)
    assert rec.decision["action_id"] == "do_nothing"
    assert rec.decision["reason_1"]


def test_a_bundle_needing_columns_the_store_lacks_is_refused(online_world, decider):
    bundle = online_world.result.bundle
    policy = DecisionPolicy(bundle, "test", PolicyConfig(), DataConfig())
    policy.bundle = type(bundle)(**{**bundle.__dict__, "customer_features": ["not_a_feature"]})
    with pytest.raises(FeatureListMismatch, match="not_a_feature"):
        RealtimeDecider(policy, decider.store)
