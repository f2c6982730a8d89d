"""Off-policy evaluation: estimators on a simulated bandit with a known value, then on a
synthetic world, where every estimate is checked against the value computed from the truth."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.ingest.contract import ACTION_ID, CUSTOMER_ID, EVENT_ID, TS
from serving import off_policy as ope
from serving.catalogue import Action, Catalogue
from serving.cli import app
from serving.config import PolicyConfig
from serving.policy import DecisionPolicy
from training.datasets import PURCHASED, SPEND, TREATED

runner = CliRunner(env={"COLUMNS": "200"})


# --- a simulated two-armed bandit with known expected rewards ---------------------------------------


def bandit(
    rng: np.random.Generator, n: int, h: float = 0.2, per_customer: int = 1, noise: float = 2.0
) -> tuple[ope.Occasions, np.ndarray]:
    """Occasions where contact vs nothing is randomized (P(nothing) = h), and the true means.

    Rewards have a large common level (5), which importance weights multiply into noise, and a
    shared per-customer effect when customers have several occasions.
    """
    x = rng.normal(size=n)
    means = np.column_stack([5.0 + x, 5.0 + 1.3 * x - 0.1])  # [nothing, contact]
    customers = np.arange(n) // per_customer
    shared = rng.normal(scale=1.5, size=customers.max() + 1)[customers] if per_customer > 1 else 0
    contacted = rng.random(n) >= h
    logged = contacted.astype(int)
    reward = means[np.arange(n), logged] + shared + rng.normal(scale=noise, size=n)
    occ = ope.Occasions(
        frame=pd.DataFrame({CUSTOMER_ID: customers.astype(str), "x": x}),
        action_ids=["a"],
        channels=["email"],
        margin=np.array([1.0]),
        cost=np.array([0.0]),
        candidates=np.ones((n, 2), dtype=bool),
        logged=logged,
        propensity=np.where(contacted, 1.0 - h, h),
        reward=reward,
        reward_kind="spend",
        occasion_margin=np.ones(n),
    )
    return occ, means


def targets_of(x: np.ndarray) -> dict[str, np.ndarray]:
    greedy = (x > 0).astype(float)  # contact where it pays (1.3x - 0.1 > x for x > 1/3)
    soft = 1.0 / (1.0 + np.exp(-2.0 * x))
    return {
        "greedy": np.column_stack([1.0 - greedy, greedy]),
        "soft": np.column_stack([1.0 - soft, soft]),
        "never": np.column_stack([np.ones_like(x), np.zeros_like(x)]),
    }


def test_estimators_cover_the_true_value_and_snips_dr_are_tighter_than_ips():
    rng = np.random.default_rng(0)
    reps, n = 300, 2000
    found: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for _ in range(reps):
        occ, means = bandit(rng, n)
        x = occ.frame["x"].to_numpy()
        q = means + rng.normal(scale=0.3, size=means.shape) + 0.2  # an imperfect reward model
        for name, target in targets_of(x).items():
            truth = float(np.mean(np.sum(target * means, axis=1)))
            pv = ope.estimate_value(occ, target, q)
            for est in pv.estimates.values():
                found.setdefault((name, est.estimator), []).append(
                    (est.value - truth, est.covers(truth))
                )
    for (name, estimator), rows in found.items():
        errors = np.array([e for e, _ in rows])
        coverage = np.mean([c for _, c in rows])
        assert 0.91 <= coverage <= 0.99, (name, estimator, coverage)
        # unbiased: the mean error is within 4 standard errors of 0
        assert abs(errors.mean()) < 4 * errors.std() / np.sqrt(reps), (name, estimator)
    for name in ("greedy", "soft", "never"):
        sd = {e: np.std([v for v, _ in found[(name, e)]]) for e in ope.ESTIMATORS}
        assert sd["snips"] < 0.8 * sd["ips"], (name, sd)
        assert sd["dr"] < 0.8 * sd["ips"], (name, sd)


def test_clustered_intervals_cover_when_customers_repeat():
    """Occasions of one customer share an effect: the iid interval would be too narrow."""
    rng = np.random.default_rng(1)
    covered_clustered, covered_iid = [], []
    for _ in range(200):
        occ, means = bandit(rng, 2000, per_customer=10)
        target = targets_of(occ.frame["x"].to_numpy())["soft"]
        truth = float(np.mean(np.sum(target * means, axis=1)))
        clustered = ope.estimate_value(occ, target).estimates["snips"]
        iid = ope.estimate_value(occ, target, cluster=False).estimates["snips"]
        assert clustered.se > iid.se
        covered_clustered.append(clustered.covers(truth))
        covered_iid.append(iid.covers(truth))
    assert np.mean(covered_clustered) >= 0.91
    assert np.mean(covered_iid) < np.mean(covered_clustered)


def test_paired_difference_is_tighter_than_either_value():
    rng = np.random.default_rng(2)
    occ, means = bandit(rng, 5000)
    targets = targets_of(occ.frame["x"].to_numpy())
    q = means + 0.2
    diff = ope.estimate_difference(occ, targets["greedy"], targets["never"], q)
    a = ope.estimate_value(occ, targets["greedy"], q).estimates["dr"]
    true_diff = float(np.mean(np.sum((targets["greedy"] - targets["never"]) * means, axis=1)))
    assert diff.se < a.se
    assert diff.covers(true_diff)


def test_targets_off_the_candidates_or_not_summing_to_one_are_refused():
    occ, _ = bandit(np.random.default_rng(3), 10)
    occ.candidates[:, 1] = False
    with pytest.raises(ValueError, match="non-candidate"):
        ope.estimate_value(occ, np.column_stack([np.zeros(10), np.ones(10)]))
    occ.candidates[:, 1] = True
    with pytest.raises(ValueError, match="sum to 1"):
        ope.estimate_value(occ, np.full((10, 2), 0.3))


# --- occasions from logged contacts ---------------------------------------------------------------


def catalogue() -> Catalogue:
    return Catalogue(
        actions=[
            Action(id="mail", channel="email", cost=0.5, margin=0.4),
            Action(id="text", channel="sms", cost=1.0, margin=0.2),
        ]
    )


def contacts_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            EVENT_ID: [f"e{i}" for i in range(8)],
            CUSTOMER_ID: ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"],
            TS: pd.Timestamp("2025-06-01", tz="UTC"),
            ACTION_ID: ["mail", "mail", "mail", "mail", "text", "text", "other", "text"],
            TREATED: [True, True, True, False, True, False, True, True],
            PURCHASED: [True, False, False, True, True, False, True, False],
            SPEND: [50.0, 0.0, 0.0, 20.0, 10.0, 0.0, 5.0, 0.0],
        }
    )


def test_occasions_from_contacts_randomisation_and_reward():
    occ = ope.occasions_from_contacts(contacts_frame(), catalogue())
    assert occ.dropped == {"action not in the catalogue": 1}
    assert occ.holdout_share["mail"] == pytest.approx(0.25)
    assert occ.holdout_share["text"] == pytest.approx(1 / 3)
    np.testing.assert_array_equal(occ.logged, [1, 1, 1, 0, 2, 0, 2])
    np.testing.assert_allclose(occ.propensity, [0.75, 0.75, 0.75, 0.25, 2 / 3, 1 / 3, 2 / 3])
    # margin x spend - cost if contacted; the held-out arm pays no cost
    np.testing.assert_allclose(occ.reward, [19.5, -0.5, -0.5, 8.0, 1.0, 0.0, -1.0])
    assert occ.candidates.sum() == 2 * len(occ)


def test_the_logging_policy_valued_on_its_own_log_is_the_mean_reward():
    occ = ope.occasions_from_contacts(contacts_frame(), catalogue())
    pv = ope.estimate_value(occ, ope.logging_policy(occ))
    assert pv.estimates["ips"].value == pytest.approx(occ.reward.mean())
    assert pv.estimates["snips"].value == pytest.approx(occ.reward.mean())
    assert ope.always_contact(occ)[:, 1:].sum(axis=1) == pytest.approx(1.0)


# --- the synthetic world: estimates beside the truth ---------------------------------------------


@pytest.fixture(scope="module")
def world_ope(trained_world):
    """Occasions of the test window (unseen by the models), every target, truth, reward model."""
    result = trained_world.result
    bundle, version = result.bundle, result.version
    uplift = DecisionPolicy(bundle, version, PolicyConfig(), trained_world.engine.fs.data)
    response = DecisionPolicy(
        bundle, version, PolicyConfig(scoring="response"), trained_world.engine.fs.data
    )
    contacts = result.data.contacts.test
    truth_dir = trained_world.data_dir.truth
    out = {}
    for outcomes in ("customer", "person"):
        rows = contacts
        if outcomes == "person":
            rows = ope.person_outcomes(trained_world.con, truth_dir, contacts, 7.0)
        occ = ope.occasions_from_contacts(rows, uplift.catalogue, "spend", bundle)
        targets = {
            "uplift": ope.policy_probabilities(uplift, occ),
            "response": ope.policy_probabilities(response, occ),
            "logging": ope.logging_policy(occ),
            "always": ope.always_contact(occ),
            "never": ope.never_contact(occ),
        }
        truth = ope.occasion_truth(occ, ope.load_contact_truth(truth_dir, trained_world.con))
        q = ope.reward_model(bundle, occ)
        values = ope.evaluate_policies(occ, targets, q, truth, baseline="logging")
        out[outcomes] = (occ, targets, truth, values)
    return out


def test_target_policies_are_distributions_over_the_candidates(world_ope):
    occ, targets, _, _ = world_ope["customer"]
    assert len(occ) > 5000
    for name, probs in targets.items():
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, err_msg=name)
        assert np.all(probs[~occ.candidates] == 0), name
    # the uplift policy holds out a tenth of what it contacts, and does not contact everyone
    assert 0.0 < targets["uplift"][:, 1:].sum(axis=1).mean() < 0.9


def test_person_level_estimates_cover_the_true_value(world_ope):
    """With the reward counted over the person, as the truth is, the intervals cover it as
    often as their level says: of 20 95% intervals one may miss (one miss is the expectation),
    and every estimate lies within its 99% interval (|estimate - truth| <= 2.576 SE)."""
    _, _, _, values = world_ope["person"]
    frame = ope.results_frame(values)
    print(frame.to_string())
    missed = frame[~frame["covered"].astype(bool)]
    assert len(missed) <= 1, missed.to_string()
    z99 = 2.576
    outside = frame[(frame["value"] - frame["truth"]).abs() > z99 * frame["se"] + 1e-12]
    assert outside.empty, outside.to_string()
    # IPS, SNIPS and DR agree closely on the well-supported policies
    for pv in values:
        if pv.name in ("logging", "always", "response"):
            v = [e.value for e in pv.estimates.values()]
            assert max(v) - min(v) < 0.5 * pv.estimates["ips"].se, pv.name


def test_customer_level_differences_cover_the_true_difference(world_ope):
    """The product's reward misses the purchases identity resolution credits to another
    fragment of the person: the absolute level falls short of the truth in both arms, and the
    paired difference from the logging policy, where that loss mostly cancels, still covers."""
    occ, _, truth, values = world_ope["customer"]
    person, _, _, _ = world_ope["person"]
    np.testing.assert_array_equal(occ.frame[EVENT_ID], person.frame[EVENT_ID])
    # a fragment sees part of the person's purchases (and, through a shared identifier such as a
    # shop's guest card, now and then another person's)
    assert person.reward.mean() > occ.reward.mean()
    loss = ope.reward_check(occ, truth).set_index("arm").loc["all (logging policy)"]
    assert loss["difference"] < 0
    for pv in values:
        assert pv.difference is not None and pv.difference.covers(pv.true_difference), pv.name


def test_person_level_reward_matches_the_truth_on_the_log(world_ope):
    occ, _, truth, _ = world_ope["person"]
    check = ope.reward_check(occ, truth)
    for _, row in check.iterrows():
        assert abs(row["difference"]) < 3 * row["se"] + 0.02 * row["true"], row.to_dict()


def test_nba_evaluate_policy_prints_estimates_beside_the_truth(trained_world, tmp_path):
    out = tmp_path / "ope.csv"
    result = runner.invoke(
        app,
        [
            "evaluate-policy",
            "--data",
            str(trained_world.data_dir.root),
            "--outcomes",
            "person",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "realised vs true" in result.output
    frame = pd.read_csv(out)
    assert set(frame["policy"]) == {
        "uplift policy (ours, champion)",
        "response-ranked",
        "logging policy",
        "always contact",
        "never contact",
    }
    assert set(frame["estimator"]) == {"ips", "snips", "dr", "dr_difference"}
    assert frame["truth"].notna().all()
