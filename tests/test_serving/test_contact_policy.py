"""Property tests: whatever the customer, history, clock and configuration, no decision breaks
consent, a contact cap, the cool-down after an opt-out, quiet hours, eligibility or capacity."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.config import DataConfig
from serving.catalogue import load_catalogue
from serving.config import Cap, ContactPolicy, Exploration, PolicyConfig, QuietHours
from serving.policy import DecisionPolicy

DATA = DataConfig()
OUTBOUND = DATA.outbound_channels
REALTIME = {c.name for c in DATA.channels if c.realtime}
WINDOWS = (7, 30)  # the feature set's exact-count windows


def _is_quiet(hour: float, q: QuietHours) -> bool:
    h = int(np.floor(hour)) % 24
    if q.start_hour <= q.end_hour:
        return q.start_hour <= h < q.end_hour
    return h >= q.start_hour or h < q.end_hour


caps = st.lists(
    st.builds(
        Cap,
        channel=st.sampled_from([None, *OUTBOUND]),
        max_contacts=st.integers(0, 3),
        window_days=st.sampled_from(WINDOWS),
    ),
    max_size=6,
    unique_by=lambda c: (c.channel, c.window_days),
)
policies = st.builds(
    ContactPolicy,
    caps=caps,
    cooldown_days=st.floats(0, 60),
    quiet_hours=st.builds(
        QuietHours,
        start_hour=st.integers(0, 23),
        end_hour=st.integers(0, 23),
        utc_offset_hours=st.sampled_from([-5.0, 0.0, 1.0, 5.5]),
    ),
)
explorations = st.builds(
    Exploration,
    mode=st.sampled_from(["none", "epsilon_greedy", "softmax"]),
    epsilon=st.floats(0.0, 1.0),
    temperature=st.floats(0.01, 5.0),
    holdout_share=st.floats(0.0, 0.5),
)


def _random_histories(features: pd.DataFrame, seed: int, n: int) -> pd.DataFrame:
    """Real customers' features with consent, contact counts and opt-outs scrambled."""
    rng = np.random.default_rng(seed)
    frame = features.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    for ch in OUTBOUND:
        frame[f"{ch}_consent"] = rng.integers(0, 2, n).astype(float)
        short = rng.integers(0, 4, n).astype(float)
        frame[f"{ch}_contact_count_7d"] = short
        frame[f"{ch}_contact_count_30d"] = short + rng.integers(0, 4, n)
    frame["all_contact_count_7d"] = sum(frame[f"{c}_contact_count_7d"] for c in OUTBOUND)
    frame["all_contact_count_30d"] = sum(frame[f"{c}_contact_count_30d"] for c in OUTBOUND)
    frame["all_negative_days_since"] = np.where(rng.random(n) < 0.5, np.nan, rng.uniform(0, 90, n))
    frame["all_purchase_days_since"] = np.where(rng.random(n) < 0.2, np.nan, rng.uniform(0, 200, n))
    return frame


def _assert_no_rule_broken(policy, frame, table, as_of, immediate, cfg: ContactPolicy):
    acted = table["action_id"] != "do_nothing"
    assert (table.loc[acted, "eligible_actions"] > 0).all()
    actions = {a.id: a for a in policy.catalogue.actions}
    local = (as_of.hour + as_of.minute / 60 + cfg.quiet_hours.utc_offset_hours) % 24
    for i in np.flatnonzero(acted.to_numpy()):
        action = actions[table["action_id"].iloc[i]]
        ch = action.channel
        row = frame.iloc[i]
        assert row[f"{ch}_consent"] == 1.0, "contacted without consent"
        for cap in cfg.caps:
            if cap.channel in (None, ch):
                count = row[f"{cap.channel or 'all'}_contact_count_{cap.window_days}d"]
                assert np.nan_to_num(count) + 1 <= cap.max_contacts, f"cap broken: {cap}"
        since = row["all_negative_days_since"]
        assert np.isnan(since) or since >= cfg.cooldown_days, "contacted during cool-down"
        if immediate and ch in REALTIME:
            assert not _is_quiet(local, cfg.quiet_hours), "real-time contact in quiet hours"
        if not immediate and ch in REALTIME:
            hour = table["send_hour"].iloc[i] + cfg.quiet_hours.utc_offset_hours
            assert not _is_quiet(hour, cfg.quiet_hours), "send hour in quiet hours"
        for rule in action.rules:
            assert rule.evaluate(frame.iloc[[i]])[0], f"eligibility rule broken: {rule.text}"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**31 - 1),
    contact_policy=policies,
    exploration=explorations,
    immediate=st.booleans(),
    hour=st.integers(0, 23),
)
def test_no_decision_ever_breaks_a_hard_rule(
    trained_world, seed, contact_policy, exploration, immediate, hour
):
    cfg = PolicyConfig(
        contact_policy=contact_policy, exploration=exploration.model_copy(update={"seed": seed})
    )
    policy = DecisionPolicy(trained_world.result.bundle, "test", cfg, DATA)
    frame = _random_histories(trained_world.features, seed, 60)
    as_of = trained_world.end.floor("D") + pd.Timedelta(hours=hour, minutes=17)
    table = policy.decide(frame, as_of=as_of, immediate=immediate, reasons=False).table
    _assert_no_rule_broken(policy, frame, table, as_of, immediate, contact_policy)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**31 - 1), capacity=st.integers(0, 20))
def test_capacity_of_a_run_is_never_exceeded(trained_world, seed, capacity):
    catalogue, text = load_catalogue()
    limited = catalogue.model_copy(
        update={
            "actions": [
                a.model_copy(update={"max_per_run": capacity, "cost": 0.0})
                for a in catalogue.actions
            ]
        }
    )
    cfg = PolicyConfig(exploration=Exploration(mode="epsilon_greedy", epsilon=0.3, seed=seed))
    policy = DecisionPolicy(trained_world.result.bundle, "test", cfg, DATA, limited, text)
    frame = _random_histories(trained_world.features, seed, 400)
    table = policy.decide(frame, reasons=False).table
    counts = table["action_id"].value_counts()
    assert (counts.drop("do_nothing", errors="ignore") <= capacity).all()


def test_an_action_outside_its_dates_is_never_chosen(trained_world):
    catalogue, text = load_catalogue()
    day = trained_world.end.date()
    ended = catalogue.model_copy(
        update={
            "actions": [
                a.model_copy(update={"end": day - timedelta(days=1), "start": None})
                if a.channel == "email"
                else a
                for a in catalogue.actions
            ]
        }
    )
    policy = DecisionPolicy(trained_world.result.bundle, "test", PolicyConfig(), DATA, ended, text)
    decisions = policy.decide(trained_world.features, reasons=False)
    assert not (decisions.table["channel"] == "email").any()
    email = [j for j, a in enumerate(ended.actions) if a.channel == "email"]
    assert (decisions.eligibility.blocked[:, email] == "action not live on the decision date").all()


@pytest.mark.parametrize("require_consent", [True, False])
def test_consent_is_what_stands_between_many_customers_and_a_contact(
    trained_world, require_consent
):
    """Sanity of the consent rule on the real world: switched off, more customers get contacts."""
    cfg = PolicyConfig(contact_policy=ContactPolicy(require_consent=require_consent))
    policy = DecisionPolicy(trained_world.result.bundle, "test", cfg, DATA)
    decisions = policy.decide(trained_world.features, reasons=False)
    blocked = (decisions.eligibility.blocked == "no consent on the channel").sum()
    assert (blocked > 0) == require_consent
