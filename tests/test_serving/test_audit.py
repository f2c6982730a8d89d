"""`nba audit`: our own decisions and campaign assignments break no rule; violating `sent` events
planted from an outside system are found exactly, one per rule; and, on generated histories, the
contact policy allows a contact exactly when the audit's independent replay finds it breaks
nothing (Hypothesis)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from features.config import DataConfig
from features.ingest.contract import EVENT_SCHEMA, DataDir
from features.ingest.event_store import ingest, open_store
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.streaming import StreamingUpdater
from serving.audit import (
    COOLDOWN_RULE,
    QUIET_RULE,
    REVOKED_RULE,
    SOURCE_CAMPAIGN,
    SOURCE_DECISION,
    SOURCE_EVENTS,
    AuditRules,
    logged_contacts,
    replay,
)
from serving.catalogue import Action, Catalogue
from serving.cli import app
from serving.config import Cap, ContactPolicy, Exploration, PolicyConfig, QuietHours
from serving.contact_policy import eligibility
from serving.decision_log import RealtimeDecisionLog
from serving.policy import SENT, DecisionPolicy

runner = CliRunner(env={"COLUMNS": "160"})
DATA = DataConfig()
FEATURES = FeatureConfig()
OUTBOUND = DATA.outbound_channels
T = pd.Timestamp("2026-03-02 12:00", tz="UTC")


# ------------------------------------------------------------------ planted violations


def _write_events(root: Path, rows: list[tuple]) -> None:
    """rows: (event_id, time offset from T, customer key, channel, event_type)."""
    frame = pd.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "ts": [T + pd.Timedelta(r[1]) for r in rows],
            "customer_key": [r[2] for r in rows],
            "link_key": None,
            "channel": [r[3] for r in rows],
            "event_type": [r[4] for r in rows],
            "action_id": ["crm_blast" if r[4] == "sent" else None for r in rows],
            "amount": np.nan,
            "category": None,
            "propensity": np.nan,
        }
    )
    (root / "events").mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, schema=EVENT_SCHEMA, preserve_index=False)
    pq.write_table(table, root / "events" / "events.parquet")


# an outside system's history: every customer consented to e-mail, SMS and push two months ago
HISTORY = [
    (f"grant-{c}-{ch}", "-60D", f"crm:{c}", ch, "consent_granted")
    for c in "abcdefgh"
    for ch in ("email", "sms", "push")
] + [
    # legal, and close to each rule's edge
    ("ok-email-1", "-7D 1min", "crm:f", "email", "sent"),  # 7 days and 1 minute before ok-3
    ("ok-email-2", "-3D", "crm:f", "email", "sent"),
    ("ok-email-3", "0h", "crm:f", "email", "sent"),  # the second in its 7-day window: allowed
    ("unsub-g", "-14D", "crm:g", "email", "unsubscribe"),
    ("ok-after-cooldown", "0h", "crm:g", "sms", "sent"),  # exactly 14 days after: allowed
    ("ok-quiet-edge", "-4h", "crm:h", "sms", "sent"),  # 08:00, the first hour not quiet
    ("revoke-h", "-20D", "crm:h", "push", "consent_revoked"),
    ("regrant-h", "-19D", "crm:h", "push", "consent_granted"),
    ("ok-regranted", "-1h", "crm:h", "push", "sent"),
    ("holdout-c", "-2D", "crm:c", "email", "holdout"),  # a control is no contact
    # for the planted ones
    ("revoke-b", "-2D", "crm:b", "email", "consent_revoked"),
    ("cap-c-1", "-6D", "crm:c", "email", "sent"),
    ("cap-c-2", "-1D", "crm:c", "email", "sent"),
    ("complaint-d", "-5D", "crm:d", "push", "complaint"),
]
PLANTED = [  # each breaks exactly one rule
    ("x-no-consent", "0h", "crm:a", "direct_mail", "sent"),
    ("x-revoked", "0h", "crm:b", "email", "sent"),
    ("x-cap", "0h", "crm:c", "email", "sent"),
    ("x-cooldown", "0h", "crm:d", "sms", "sent"),
    ("x-quiet", "+10h", "crm:e", "sms", "sent"),  # 22:00
]
EXPECTED = {
    ("x-no-consent", "no_consent"),
    ("x-revoked", REVOKED_RULE),
    ("x-cap", "cap"),
    ("x-cooldown", COOLDOWN_RULE),
    ("x-quiet", QUIET_RULE),
}


def test_planted_violations_are_found_exactly(tmp_path):
    root = tmp_path / "shop"
    _write_events(root, HISTORY + PLANTED)
    ingest(DataDir(root), DATA, progress=False)
    # the service's real-time log: a push it sent (legal) and a held-out SMS (no contact)
    con = open_store(DataDir(root))
    customer = con.execute("SELECT customer_id FROM identity WHERE identifier = 'crm:e'").fetchone()
    log = RealtimeDecisionLog(DataDir(root))
    for decision_id, channel, logged_as in [("d-rt-1", "push", "sent"), ("d-rt-2", "sms", "")]:
        log.append(
            {
                "decision_id": decision_id,
                "customer_id": customer[0],
                "as_of": T + pd.Timedelta(hours=1),
                "action_id": f"{channel}_newin",
                "channel": channel,
                "logged_as": logged_as,
            }
        )
    log.close()
    out = tmp_path / "violations.csv"
    result = runner.invoke(app, ["audit", "--data", str(root), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "5 of 14 contacts broke a rule" in result.output
    assert "1 service" in result.output
    found = pd.read_csv(out)
    assert set(zip(found["contact_id"], found["rule"], strict=True)) == EXPECTED
    assert len(found) == len(EXPECTED)
    assert (found["source"] == SOURCE_EVENTS).all()
    evidence = found.set_index("contact_id")
    assert evidence.loc["x-cap", "evidence_ids"] == "cap-c-1; cap-c-2"
    assert "cap-c-1 at 2026-02-24 12:00:00" in evidence.loc["x-cap", "evidence"]
    assert evidence.loc["x-revoked", "evidence_ids"] == "grant-b-email; revoke-b"
    assert evidence.loc["x-cooldown", "evidence_ids"] == "complaint-d"
    assert "22:00 local" in evidence.loc["x-quiet", "evidence"]

    # the same history without the planted contacts: nothing to report, exit status 0
    clean = tmp_path / "clean"
    _write_events(clean, HISTORY)
    result = runner.invoke(app, ["audit", "--data", str(clean)])
    assert result.exit_code == 0, result.output
    assert "no violation" in result.output
    assert pd.read_parquet(clean / "audit" / "violations.parquet").empty

    # --since: earlier contacts are history, not audited
    result = runner.invoke(app, ["audit", "--data", str(root), "--since", "2026-03-02 18:00"])
    assert result.exit_code == 1 and "1 of 1 contacts" in result.output, result.output


def test_a_decision_record_without_its_columns_is_one_line(tmp_path):
    root = tmp_path / "shop"
    _write_events(root, HISTORY)
    (root / "decisions").mkdir()
    pd.DataFrame({"decision_id": ["d-1"]}).to_parquet(root / "decisions" / "run.parquet")
    result = runner.invoke(app, ["audit", "--data", str(root)])
    assert result.exit_code == 2
    assert "run.parquet: a decision record needs columns" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ our own decisions


def test_our_own_decisions_and_campaign_assignments_break_no_rule(trained_world, tmp_path):
    copy = tmp_path / "world"
    for part in ("events", "customers", "mlflow"):
        shutil.copytree(trained_world.data_dir.root / part, copy / part)
    end = trained_world.end
    # everyone's next best action just after the last event, logged (sent at its send hour) ...
    result = runner.invoke(app, ["decide", "--data", str(copy), "--log", "--show", "0"])
    assert result.exit_code == 0, result.output
    # ... and two days later a campaign, which sees those contacts in the store (closed loop)
    plan = {
        "name": "audit_test",
        "decision_date": (end + pd.Timedelta(days=2)).isoformat(),
        "actions": ["email_newin", "sms_flash", "push_newin", "dm_catalog", "call_winback"],
        "capacities": {"direct_mail": 300, "sms": 200, "call_centre": 30},
        "holdout": {"fraction": 0.1, "seed": 3},
    }
    file = tmp_path / "campaign.yaml"
    file.write_text(yaml.safe_dump(plan))
    result = runner.invoke(
        app,
        ["campaign", "--data", str(copy), "--campaign", str(file), "--log", "--no-report"]
        + ["--exact-max", "0"],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["audit", "--data", str(copy), "--since", end.isoformat()])
    assert result.exit_code == 0, result.output
    assert "no violation" in result.output

    # every contact audited once: a logged decision's sent event in the store is the same contact
    logged = logged_contacts(copy)
    sent = {
        SOURCE_DECISION: (pd.read_parquet(copy / "decisions.parquet")["logged_as"] == SENT).sum(),
        SOURCE_CAMPAIGN: (
            pd.read_parquet(copy / "campaigns" / "audit_test" / "assignments.parquet")["logged_as"]
            == SENT
        ).sum(),
    }
    assert min(sent.values()) > 0
    con = open_store(DataDir(copy))
    rules = AuditRules.of(DATA, FEATURES, PolicyConfig())
    report = replay(con, logged, rules, since=end)
    assert report.audited == sent
    assert report.violations.empty


def test_the_audit_agrees_with_the_policy_on_the_synthetic_history(trained_world):
    """The synthetic world's own campaigns did not follow our policy: a sample of the contacts
    the audit flags and of those it clears, each decided again by the contact policy on the
    batch engine's features at the contact's time, are blocked and allowed exactly so."""
    con = open_store(trained_world.data_dir)
    rules = AuditRules.of(DATA, FEATURES, PolicyConfig())
    report = replay(con, logged_contacts(trained_world.data_dir.root), rules)
    contacts = con.sql("SELECT contact_id, customer_id, channel, ts FROM _audit_contacts").df()
    flagged = contacts["contact_id"].isin(set(report.violations["contact_id"]))
    assert 0 < flagged.sum() < len(contacts)
    sample = pd.concat(
        [
            contacts[flagged].sample(150, random_state=1),
            contacts[~flagged].sample(150, random_state=1),
        ]
    ).reset_index(drop=True)
    queries = pd.DataFrame(
        {"customer_id": sample["customer_id"], "as_of": pd.to_datetime(sample["ts"], utc=True)}
    )
    feats = pd.concat([queries, trained_world.engine.at(queries)], axis=1)
    el = eligibility(feats, queries["as_of"], BARE, rules.policy, DATA, immediate=True)
    column = np.array([OUTBOUND.index(c) for c in sample["channel"]])
    allowed = el.allowed[np.arange(len(sample)), column]
    assert (allowed == ~sample["contact_id"].isin(set(report.violations["contact_id"]))).all()


# ------------------------------------------------------------------ generated histories

FS = FeatureSet(DATA, FEATURES)
UPDATER = StreamingUpdater(FS)
# one rule-free action per outbound channel: what blocks it is a hard rule, nothing else
BARE = Catalogue(
    actions=[Action(id=f"{ch}_any", channel=ch, cost=0.0, margin=0.5) for ch in OUTBOUND]
)
DAY_MIN = 24 * 60
event_kinds = st.sampled_from(
    ["consent_granted", "consent_revoked", "unsubscribe", "complaint", "sent", "sent", "holdout"]
)
EDGES = [d * DAY_MIN + k for d in (1, 3, 7, 14, 30) for k in (-1, 0, 1)]
minutes_before = st.one_of(st.integers(1, 40 * DAY_MIN), st.sampled_from(EDGES))  # windows' edges
histories = st.lists(st.tuples(st.sampled_from(OUTBOUND), event_kinds, minutes_before), max_size=14)
policies = st.builds(
    ContactPolicy,
    caps=st.lists(
        st.builds(
            Cap,
            channel=st.sampled_from([None, *OUTBOUND]),
            max_contacts=st.integers(0, 3),
            window_days=st.sampled_from(FEATURES.fatigue_windows_days),
        ),
        max_size=5,
        unique_by=lambda c: (c.channel, c.window_days),
    ),
    cooldown_days=st.sampled_from([0.0, 1.0, 3.0, 7.0, 14.0, 2.5]),
    quiet_hours=st.builds(
        QuietHours,
        start_hour=st.integers(0, 23),
        end_hour=st.integers(0, 23),
        utc_offset_hours=st.sampled_from([-5.0, 0.0, 1.0, 5.5]),
    ),
)


def _world(people: list[list[tuple]], as_of: pd.Timestamp):
    """The generated histories as event-store rows, one customer per (person, channel) so that
    each possible contact is audited on its own, and each person's features at `as_of` from the
    streaming updater (the online store's arithmetic)."""
    rows, feats = [], []
    as_of_us = as_of.value // 1000
    for i, history in enumerate(people):
        state = UPDATER.new_state()
        for k, (channel, kind, minutes) in enumerate(sorted(history, key=lambda e: -e[2])):
            ts = as_of - pd.Timedelta(minutes=minutes)
            UPDATER.apply(state, ts.value // 1000, channel, kind)
            for ch in OUTBOUND:
                rows.append((f"e{i}-{k}-{ch}", ts, f"p{i}-{ch}", channel, kind))
        feats.append(UPDATER.features_at(state, as_of_us))
    events = pd.DataFrame(rows, columns=["event_id", "ts", "customer_id", "channel", "event_type"])
    events["ts"] = pd.to_datetime(events["ts"], utc=True).astype("datetime64[us, UTC]")
    events["action_id"] = None
    return events, pd.DataFrame(np.array(feats).reshape(len(people), -1), columns=FS.names)


def _replay(events: pd.DataFrame, contacts: pd.DataFrame, cfg: ContactPolicy, as_of):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events", events)
    rules = AuditRules.of(DATA, FEATURES, PolicyConfig(contact_policy=cfg))
    try:
        return replay(con, contacts, rules, since=as_of).violations
    finally:
        con.close()


def _contacts(ids, people, channels, as_of) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "contact_id": ids,
            "source": SOURCE_DECISION,
            "customer_id": [f"p{i}-{ch}" for i, ch in zip(people, channels, strict=True)],
            "channel": channels,
            "action_id": "any",
            "ts": pd.Series([as_of] * n, dtype="datetime64[us, UTC]"),
            "decided_at": pd.Series([as_of] * n, dtype="datetime64[us, UTC]"),
        }
    )


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    people=st.lists(histories, min_size=1, max_size=4),
    cfg=policies,
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
)
@example(  # a contact exactly a window's length before counts; one a minute older does not
    people=[
        [("email", "consent_granted", 40 * DAY_MIN), ("email", "sent", 7 * DAY_MIN + k)]
        for k in (-1, 0, 1)
    ],
    cfg=ContactPolicy(caps=[Cap(channel="email", max_contacts=1, window_days=7)]),
    hour=12,
    minute=0,
)
@example(  # the cool-down ends exactly cooldown_days after the opt-out
    people=[
        [("sms", "consent_granted", 40 * DAY_MIN), ("push", "unsubscribe", 14 * DAY_MIN + k)]
        for k in (-1, 0, 1)
    ],
    cfg=ContactPolicy(caps=[]),
    hour=12,
    minute=0,
)
@example(  # a grant and a revocation at the same time: no consent
    people=[[("email", "consent_granted", DAY_MIN), ("email", "consent_revoked", DAY_MIN)]],
    cfg=ContactPolicy(caps=[]),
    hour=12,
    minute=0,
)
@example(  # quiet hours end at end_hour, local time
    people=[[("sms", "consent_granted", DAY_MIN), ("push", "consent_granted", DAY_MIN)]],
    cfg=ContactPolicy(quiet_hours=QuietHours(start_hour=21, end_hour=8, utc_offset_hours=5.5)),
    hour=2,
    minute=30,
)
def test_policy_allows_a_contact_exactly_when_the_audit_finds_it_clean(people, cfg, hour, minute):
    as_of = T.floor("D") + pd.Timedelta(hours=hour, minutes=minute)
    events, feats = _world(people, as_of)
    el = eligibility(feats, as_of, BARE, cfg, DATA, immediate=True)
    n, m = el.allowed.shape
    who = np.repeat(np.arange(n), m)
    channels = [a.channel for a in BARE.actions] * n
    ids = [f"q{i}-{ch}" for i, ch in zip(who, channels, strict=True)]
    found = _replay(events, _contacts(ids, who, channels, as_of), cfg, as_of)
    reasons = found.groupby("contact_id")["reason"].agg(set)
    for k, cid in enumerate(ids):
        allowed, blocked = el.allowed.flat[k], el.blocked.flat[k]
        broke = reasons.get(cid, set())
        assert allowed == (not broke), (cid, blocked, broke)
        if not allowed:
            assert blocked in broke, (cid, blocked, broke)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    people=st.lists(histories, min_size=1, max_size=6),
    cfg=policies,
    hour=st.integers(0, 23),
    seed=st.integers(0, 2**31 - 1),
)
def test_no_decision_of_the_policy_breaks_a_hard_rule(trained_world, people, cfg, hour, seed):
    """The whole decision (rules, scores, an exploring choice) on the trained bundle: every
    contact it makes passes the audit's replay of the same histories."""
    as_of = T.floor("D") + pd.Timedelta(hours=hour, minutes=30)
    events, feats = _world(people, as_of)
    base = trained_world.features.sample(len(people), random_state=seed).reset_index(drop=True)
    table = _decide(trained_world, base, feats, cfg, as_of, epsilon=0.7, seed=seed)
    sent = table.index[table["logged_as"] == SENT].to_numpy()
    channels = table.loc[sent, "channel"].tolist()
    contacts = _contacts([f"d{i}" for i in sent], sent, channels, as_of)
    found = _replay(events, contacts, cfg, as_of)
    assert found.empty, found[["contact_id", "rule", "evidence"]].to_string()


def test_the_world_has_contacts_to_decide_on(trained_world):
    """Sanity for the property above: the bundle's policy contacts someone when nothing forbids
    it (else the property would hold vacuously)."""
    cfg = ContactPolicy(caps=[], quiet_hours=QuietHours(start_hour=0, end_hour=0))
    people = [[(ch, "consent_granted", DAY_MIN) for ch in OUTBOUND]] * 5
    as_of = T
    _, feats = _world(people, as_of)
    base = trained_world.features.head(5).reset_index(drop=True)
    table = _decide(trained_world, base, feats, cfg, as_of, epsilon=1.0, seed=1)
    assert (table["logged_as"] == SENT).any()


def _decide(trained_world, base, feats, cfg, as_of, epsilon: float, seed: int) -> pd.DataFrame:
    """The trained bundle's policy on `base` rows carrying the generated histories' features,
    exploring with `epsilon` so that contacts the greedy choice would skip are tried too."""
    frame = base.assign(**{c: feats[c].to_numpy() for c in FS.names})
    explore = Exploration(mode="epsilon_greedy", epsilon=epsilon, holdout_share=0.0, seed=seed)
    policy = DecisionPolicy(
        trained_world.result.bundle,
        "test",
        PolicyConfig(contact_policy=cfg, exploration=explore),
        DATA,
    )
    return policy.decide(frame, as_of=as_of, immediate=True, reasons=False).table
