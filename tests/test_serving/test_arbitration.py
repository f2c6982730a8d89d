"""Arbitration, choice and reasons: do nothing wins when nothing pays, scores add up, the logged
propensities are the real choice probabilities, and reasons are the largest contributions."""

import numpy as np
import pytest
from scipy import stats

from features.config import DataConfig
from serving.catalogue import load_catalogue
from serving.config import Exploration, PolicyConfig
from serving.exploration import choice_probabilities, sample
from serving.policy import DecisionPolicy
from serving.reasons import FeatureWords, deciding_contributions, explain

DATA = DataConfig()


def _policy(world, catalogue=None, text="", **cfg) -> DecisionPolicy:
    return DecisionPolicy(
        world.result.bundle, "test", PolicyConfig.model_validate(cfg), DATA, catalogue, text
    )


def _with(catalogue, **update):
    return catalogue.model_copy(
        update={"actions": [a.model_copy(update=update) for a in catalogue.actions]}
    )


def test_do_nothing_when_no_action_covers_its_cost(trained_world):
    catalogue, text = load_catalogue()
    policy = _policy(trained_world, _with(catalogue, cost=1e6), text)
    table = policy.decide(trained_world.features).table
    assert (table["action_id"] == "do_nothing").all()
    assert (table["score"] == 0).all() and (table["logged_as"] == "").all()
    some = table["eligible_actions"] > 0
    assert some.any()
    assert table.loc[some, "reason_1"].str.contains("covers its cost").all()
    assert table.loc[~some, "reason_1"].str.contains("no action is allowed").all()


def test_free_contacts_with_positive_uplift_are_taken_and_scores_add_up(trained_world):
    catalogue, text = load_catalogue()
    policy = _policy(trained_world, _with(catalogue, cost=0.0), text)
    decisions = policy.decide(trained_world.features, reasons=False)
    t = decisions.table
    acted = t[t["action_id"] != "do_nothing"]
    assert len(acted) > 0
    expected = acted["lever"] * acted["uplift"] * acted["value"] * acted["margin"] - acted["cost"]
    np.testing.assert_allclose(acted["score"], expected, rtol=1e-9)
    # whoever did nothing had no eligible action with a positive score
    best = np.max(decisions.scored.score, axis=1)
    nothing = (t["action_id"] == "do_nothing").to_numpy()
    assert (best[nothing] <= 0).all()
    # the greedy choice is the best action
    assert np.allclose(t.loc[~nothing, "score"], best[~nothing])


def test_one_customer_at_a_time_scores_as_the_whole_batch(trained_world, monkeypatch):
    """A real-time request and a batch run give a customer the same candidates and numbers,
    whatever chunk of the batch the customer's pairs were scored in."""
    from serving import arbitration

    monkeypatch.setattr(arbitration, "CUSTOMERS_PER_CHUNK", 7)  # chunk edges inside 40 rows
    features = trained_world.features.head(40)
    policy = _policy(trained_world)
    batch = policy.decide(features, reasons=False).scored
    assert np.isfinite(batch.score).sum() > 40  # several candidates per customer
    for i in range(len(features)):
        one = policy.decide(features.iloc[[i]], reasons=False).scored
        for name in ("score", "p_response", "p_treated", "p_control", "value"):
            np.testing.assert_array_equal(getattr(one, name)[0], getattr(batch, name)[i])


def test_response_scoring_ranks_by_response_probability(trained_world):
    policy = _policy(trained_world, scoring="response")
    t = policy.decide(trained_world.features, reasons=False).table
    acted = t[t["action_id"] != "do_nothing"]
    expected = acted["lever"] * acted["p_response"] * acted["value"] * acted["margin"]
    np.testing.assert_allclose(acted["score"], expected - acted["cost"], rtol=1e-9)


@pytest.mark.parametrize(
    "exploration",
    [
        Exploration(mode="none"),
        Exploration(mode="epsilon_greedy", epsilon=0.2),
        Exploration(mode="softmax", temperature=0.05),
    ],
)
def test_choice_probabilities_sum_to_one_over_the_eligible_candidates(trained_world, exploration):
    policy = _policy(trained_world, exploration=exploration.model_dump())
    decisions = policy.decide(trained_world.features, reasons=False)
    probs = decisions.probabilities
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs[:, 1:][~decisions.eligibility.allowed] == 0).all()
    assert (probs[:, 0] > 0).all() or exploration.mode == "none"
    t = decisions.table
    index = {a: i for i, a in enumerate(["do_nothing", *decisions.scored.action_ids])}
    column = t["action_id"].map(index).to_numpy()
    np.testing.assert_allclose(t["propensity"], probs[np.arange(len(t)), column])
    h = exploration.holdout_share
    held = (t["logged_as"] == "holdout").to_numpy()
    np.testing.assert_allclose(t.loc[held, "logged_propensity"], t.loc[held, "propensity"] * h)


def test_sampling_follows_the_recorded_probabilities():
    rng = np.random.default_rng(0)
    scores = np.array([[0.5, -np.inf, 0.2, -0.1]] * 40_000)
    probs = choice_probabilities(scores, Exploration(mode="epsilon_greedy", epsilon=0.3))
    picks = sample(probs, rng)
    observed = np.bincount(picks, minlength=5)
    expected = probs[0] * len(picks)
    assert observed[2] == 0  # ineligible, never drawn
    keep = expected > 0
    assert stats.chisquare(observed[keep], expected[keep]).pvalue > 0.001


def test_reasons_are_the_largest_contributions_of_the_deciding_model(trained_world):
    policy = _policy(trained_world)
    features = trained_world.features.iloc[:300].reset_index(drop=True)
    action = next(a for a in policy.catalogue.actions if a.channel == "email")
    words = FeatureWords(DATA)
    reasons, _ = explain(
        trained_world.result.bundle, "uplift", features, action.channel, action.id, words, 3
    )
    frame = features[trained_world.result.bundle.customer_features].assign(
        channel=action.channel, action_id=action.id
    )
    contrib, _ = deciding_contributions(
        trained_world.result.bundle, "uplift", frame, action.channel
    )
    contrib = contrib.drop(columns=["bias", "channel", "action_id"])
    for i, found in enumerate(reasons):
        top = contrib.iloc[i].abs().sort_values(ascending=False)
        assert [r.feature for r in found] == list(top.index[:3])
        assert abs(found[0].contribution) == pytest.approx(top.iloc[0])
        assert all(r.text for r in found)


def test_decisions_carry_ids_versions_and_reasons(trained_world):
    policy = _policy(trained_world)
    t = policy.decide(trained_world.features).table
    assert t["decision_id"].is_unique
    assert (t["model_version"] == "test").all()
    assert t["policy_version"].str.startswith("policy-").all()
    acted = t[t["action_id"] != "do_nothing"]
    assert len(acted) and (acted["reason_1"] != "").all() and (acted["reason_3"] != "").all()
    assert acted["send_hour"].between(0, 23).all()


def test_profile_reasons_read_as_the_customers_table_wrote_them():
    words = FeatureWords(DATA)
    assert words.describe("profile_age", 34.0) == "age: 34"  # stored as a float
    assert words.describe("profile_loyalty_tier", "gold") == "loyalty tier: gold"
    assert words.describe("profile_age", float("nan")) == "age: unknown"
