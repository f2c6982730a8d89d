"""The synthetic world: determinism, the data contract, signal that matches the truth, realism."""

import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.config import DataConfig
from features.ingest.contract import EVENT_SCHEMA, KEY_PATTERN
from features.synthetic.campaigns import ACTIONS
from features.synthetic.params import WorldParams
from features.synthetic.purchases import true_purchase_probability
from features.synthetic.world import generate_world

TABLES = (
    "events",
    "customers",
    "truth/identity",
    "truth/customers",
    "truth/contacts",
    "truth/customer_actions",
)
RESPONSE = {c.name: c.response for c in DataConfig().channels if c.outbound}
HORIZON = WorldParams().horizon_days


def _read(root: Path, table: str) -> pd.DataFrame:
    return pd.read_parquet(root / table)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, object]:
    """A moderate world (10,000 persons, one year) shared by the signal and realism tests."""
    root = tmp_path_factory.mktemp("synth") / "world"
    summary = generate_world(root, customers=10_000, days=365, seed=5, workers=1, progress=False)
    return root, summary


@pytest.fixture(scope="module")
def con(world) -> duckdb.DuckDBPyConnection:
    root, _ = world
    con = duckdb.connect()
    for name in TABLES:
        con.sql(
            f"CREATE VIEW {name.replace('/', '_')} AS SELECT * FROM read_parquet('{root / name}/*.parquet')"
        )
    # valid events with the person behind their key (a shared tablet counts for its owner)
    con.sql(
        """CREATE TABLE person_events AS
           SELECT DISTINCT e.*, i.person_id
           FROM events e
           JOIN (SELECT identifier, min(person_id) AS person_id FROM truth_identity GROUP BY 1) i
             ON i.identifier = e.customer_key"""
    )
    return con


@pytest.fixture(scope="module")
def outcomes(con, world) -> pd.DataFrame:
    """Every contact of the truth with what followed it: its response, a purchase within H."""
    case = " ".join(f"WHEN '{c}' THEN '{r}'" for c, r in RESPONSE.items())
    return con.sql(
        f"""
        WITH c AS (SELECT *, CASE channel {case} END AS response_type FROM truth_contacts)
        SELECT c.*, cu.uplift_type, cu.affinity_email,
          EXISTS (SELECT 1 FROM person_events r
                  WHERE r.person_id = c.person_id AND r.action_id = c.action_id
                    AND r.channel = c.channel AND r.event_type = c.response_type
                    AND r.ts > c.ts AND r.ts <= c.ts + INTERVAL 3 DAY) AS responded,
          EXISTS (SELECT 1 FROM person_events r
                  WHERE r.person_id = c.person_id AND r.action_id = c.action_id
                    AND r.event_type = 'open' AND r.ts > c.ts
                    AND r.ts <= c.ts + INTERVAL 3 DAY) AS opened,
          EXISTS (SELECT 1 FROM person_events r
                  WHERE r.person_id = c.person_id AND r.event_type = 'purchase'
                    AND r.ts > c.ts AND r.ts <= c.ts + INTERVAL {int(HORIZON)} DAY) AS bought
        FROM c JOIN truth_customers cu USING (person_id)
        -- only contacts whose horizon fits in the history
        WHERE c.ts + INTERVAL {int(HORIZON)} DAY < (SELECT max(ts) FROM events)
        """
    ).df()


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_the_same_tables_whatever_the_number_of_workers(tmp_path):
    params = WorldParams(chunk_size=400)
    kwargs = dict(customers=1000, days=90, progress=False, params=params)
    one = generate_world(tmp_path / "one", seed=1, workers=1, **kwargs)
    two = generate_world(tmp_path / "two", seed=1, workers=2, **kwargs)
    generate_world(tmp_path / "other", seed=2, workers=1, **kwargs)
    assert one.events == two.events and one.contacts == two.contacts
    assert len(list((tmp_path / "one" / "events").iterdir())) == 3  # chunks, not workers
    for table in TABLES:
        pd.testing.assert_frame_equal(
            _read(tmp_path / "one", table), _read(tmp_path / "two", table)
        )
    a, b = _read(tmp_path / "one", "events"), _read(tmp_path / "other", "events")
    assert not set(a["customer_key"]) & set(b["customer_key"])
    assert len(a) != len(b) or not a["ts"].equals(b["ts"])


# --- the data contract ------------------------------------------------------------------------


def test_events_conform_to_the_contract(world):
    root, summary = world
    config = DataConfig()
    files = sorted((root / "events").glob("*.parquet"))
    for f in files:
        schema = pq.read_schema(f)
        assert [(x.name, x.type) for x in schema] == [(x.name, x.type) for x in EVENT_SCHEMA]
    events = _read(root, "events")
    assert len(events) == summary.events
    assert events["ts"].is_monotonic_increasing  # one chunk: one file, sorted by time

    pattern = re.compile(KEY_PATTERN)
    bad_key = ~events["customer_key"].map(lambda k: bool(pattern.match(k)))
    bad_channel = ~events["channel"].isin(config.channel_names)
    bad_amount = events["amount"] < 0
    bad_propensity = events["propensity"] > 1
    malformed = bad_key | bad_channel | bad_amount | bad_propensity
    assert bad_key.any() and bad_channel.any() and bad_amount.any() and bad_propensity.any()
    assert set(events.loc[bad_key, "customer_key"]) == {"nokey"}

    valid = events[~malformed]
    assert valid["event_type"].isin(config.event_types.all).all()
    links = valid["link_key"].dropna()
    assert links.map(lambda k: bool(pattern.match(k))).all()
    types = {k.split(":")[0] for k in pd.concat([valid["customer_key"], links])}
    assert types <= set(config.identity.identifier_types)
    prop = valid["propensity"].dropna()
    assert ((prop > 0) & (prop <= 1)).all()
    outbound = valid["event_type"].isin(["sent", "holdout"])
    assert valid.loc[outbound, "propensity"].notna().all()
    assert valid.loc[valid["event_type"] == "purchase", "amount"].gt(0).all()

    # event ids are unique except for the injected retries, which are exact copies
    duplicated = events["event_id"].duplicated(keep=False)
    assert duplicated.any()
    copies = events[duplicated]
    assert len(copies.drop_duplicates()) == copies["event_id"].nunique()
    dirty = int(events["event_id"].duplicated().sum()) + int(malformed.sum())
    assert dirty == summary.dirty_rows

    # every valid outbound event has its truth row, and nothing else does
    contacts = _read(root, "truth/contacts")
    sent = valid.loc[outbound].drop_duplicates("event_id")
    assert set(contacts["event_id"]) == set(sent["event_id"])
    merged = contacts.merge(sent, on="event_id", suffixes=("", "_event"))
    assert (merged["ts"] == merged["ts_event"]).all()
    assert (merged["treated"] == (merged["event_type"] == "sent")).all()


def test_customers_and_identity_truth(world, con):
    root, _ = world
    customers = _read(root, "customers")
    truth = _read(root, "truth/customers")
    assert len(customers) == len(truth) == 10_000
    assert customers["customer_key"].str.startswith("crm:").all()
    assert (customers["customer_key"].to_numpy() == truth["crm_key"].to_numpy()).all()
    assert set(customers["region"]) == {"urban", "suburban", "rural"}
    assert set(customers["loyalty_tier"]) == {"none", "silver", "gold"}
    assert set(customers["signup_channel"]) == {"store", "web", "app"}
    assert customers["age"].between(18, 80).all()
    shares = truth["uplift_type"].value_counts(normalize=True)
    assert shares["persuadable"] == pytest.approx(0.30, abs=0.03)
    assert shares["sleeping_dog"] == pytest.approx(0.15, abs=0.03)
    # heavier buyers are more often gold
    by_tier = truth.groupby("loyalty_tier")["purchase_intensity"].mean()
    assert by_tier["gold"] > by_tier["silver"] > by_tier["none"]

    identity = _read(root, "truth/identity")
    # every valid key of the events belongs to a person, or is a shared guest card
    unknown = con.sql(
        """SELECT count(*) FROM events e
           WHERE e.customer_key <> 'nokey'
             AND e.customer_key NOT IN (SELECT identifier FROM truth_identity)"""
    ).fetchall()[0][0]
    assert unknown == 0
    guests = identity[identity["role"] == "guest_card"]
    assert len(guests) == 20 and guests["shared"].all() and guests["person_id"].isna().all()
    degree = con.sql(
        """SELECT max(n) FROM (SELECT link_key, count(DISTINCT customer_key) AS n FROM events
           WHERE link_key LIKE 'loyalty:guest-%' GROUP BY 1)"""
    ).fetchall()[0][0]
    assert degree > 20  # a huge-degree identifier that identity resolution must cut
    tablets = identity[identity["shared"] & (identity["role"] == "app_device")]
    assert len(tablets) > 0
    assert tablets.groupby("identifier")["person_id"].nunique().eq(2).all()


# --- signal -------------------------------------------------------------------------------------


def test_high_email_affinity_clicks_more(outcomes):
    sent = outcomes[(outcomes["channel"] == "email") & outcomes["treated"]]
    quartile = pd.qcut(sent["affinity_email"], 4, labels=False)
    rates = sent.groupby(quartile)["responded"].mean().to_numpy()
    assert (np.diff(rates) > 0).all(), rates
    assert rates[-1] > 2 * rates[0]


@pytest.mark.parametrize("channel", list(RESPONSE))
def test_realised_response_rate_matches_the_truth(outcomes, channel):
    sent = outcomes[(outcomes["channel"] == channel) & outcomes["treated"]]
    p = sent["p_response"].to_numpy()
    se = np.sqrt((p * (1 - p)).sum()) / len(p)
    assert abs(sent["responded"].mean() - p.mean()) < 4 * se


def test_realised_purchase_rates_match_the_truth(outcomes):
    sent, held = outcomes[outcomes["treated"]], outcomes[~outcomes["treated"]]
    for rows, column in ((sent, "p_purchase_treated"), (held, "p_purchase_control")):
        p = rows[column].to_numpy()
        se = np.sqrt((p * (1 - p)).sum()) / len(p)
        # overlapping windows of several contacts add a little on top of the truth
        assert -4 * se < rows["bought"].mean() - p.mean() < 4 * se + 0.003


def _effect(rows: pd.DataFrame) -> tuple[float, float, float]:
    """Realised sent - holdout purchase rate, its standard error, and the truth's mean."""
    sent, held = rows[rows["treated"]]["bought"], rows[~rows["treated"]]["bought"]
    se = np.sqrt(sent.var() / len(sent) + held.var() / len(held))
    truth = (rows["p_purchase_treated"] - rows["p_purchase_control"]).mean()
    return sent.mean() - held.mean(), se, truth


def test_sent_versus_holdout_follows_the_true_incremental(outcomes):
    diff, se, truth = _effect(outcomes)
    assert truth > 0
    assert abs(diff - truth) < 4 * se
    persuadable = _effect(outcomes[outcomes["uplift_type"] == "persuadable"])
    dog = _effect(outcomes[outcomes["uplift_type"] == "sleeping_dog"])
    assert persuadable[2] > 0 > dog[2]
    assert persuadable[0] > 2.5 * persuadable[1]  # clearly positive where the truth says so
    assert dog[0] < persuadable[0]
    for realised, se, true in (persuadable, dog):
        assert abs(realised - true) < 4 * se


def test_true_purchase_probability_is_the_contacts_control_probability(world):
    root, _ = world
    contacts = _read(root, "truth/contacts").sample(50, random_state=0)
    people = _read(root, "truth/customers").set_index("person_id")
    for row in contacts.itertuples():
        p = true_purchase_probability(people.loc[[row.person_id]], row.ts, HORIZON)
        assert p.iloc[0] == pytest.approx(row.p_purchase_control, rel=1e-9)
    everyone = true_purchase_probability(people, pd.Timestamp("2025-06-01", tz="UTC"), HORIZON)
    assert everyone.between(0, 1).all() and 0.01 < everyone.mean() < 0.1


# --- realism ------------------------------------------------------------------------------------


def test_base_rates_are_in_realistic_ranges(world, outcomes):
    root, summary = world
    sent = outcomes[outcomes["treated"]]
    rate = sent.groupby("channel")["responded"].mean()
    email = sent[sent["channel"] == "email"]
    assert 0.15 <= email["opened"].mean() <= 0.25
    assert 0.01 <= rate["email"] <= 0.04
    assert 0.03 <= rate["sms"] <= 0.10
    assert 0.03 <= rate["push"] <= 0.08
    assert 0.02 <= rate["direct_mail"] <= 0.09
    calls = sent[sent["channel"] == "call_centre"]
    assert 0.05 <= calls["bought"].mean() <= 0.12
    incremental = (outcomes["p_purchase_treated"] - outcomes["p_purchase_control"]).mean()
    assert 0.001 <= incremental <= 0.03
    assert 50 <= summary.events / summary.customers <= 100


def test_no_contact_while_consent_is_revoked(con):
    """Replays the consent events per key and channel: every `sent` finds consent granted."""
    violations = con.sql(
        """
        WITH c AS (
          SELECT customer_key, channel, ts, event_type,
                 last_value(CASE WHEN event_type = 'consent_granted' THEN true
                                 WHEN event_type IN ('consent_revoked', 'unsubscribe', 'complaint')
                                 THEN false END IGNORE NULLS)
                   OVER (PARTITION BY customer_key, channel ORDER BY ts, event_type = 'sent'
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS consent
          FROM (SELECT DISTINCT * FROM events)
          WHERE event_type IN ('sent', 'consent_granted', 'consent_revoked', 'unsubscribe',
                               'complaint')
            -- the injected malformed rows are for validation to reject, not consent facts
            AND customer_key <> 'nokey' AND channel IN ('email', 'sms', 'push', 'direct_mail',
                                                        'call_centre'))
        SELECT count(*) FILTER (WHERE event_type = 'sent' AND consent IS NOT true),
               count(*) FILTER (WHERE event_type = 'sent')
        FROM c
        """
    ).fetchall()[0]
    assert violations[1] > 0
    assert violations[0] == 0
    revoked = con.sql("SELECT count(*) FROM events WHERE event_type = 'consent_revoked'")
    assert revoked.fetchall()[0][0] > 0


def test_actions_catalogue_and_end_of_history_truth(world):
    root, _ = world
    assert {a.action_id for a in ACTIONS} >= {
        "email_discount",
        "email_newin",
        "email_loyalty",
        "sms_flash",
        "push_newin",
        "push_discount",
        "dm_catalog",
        "dm_winback",
        "call_winback",
    }
    table = _read(root, "truth/customer_actions")
    assert len(table) == 10_000 * len(ACTIONS)
    assert np.allclose(
        table["incremental"], table["p_purchase_treated"] - table["p_purchase_control"]
    )
    assert table["p_response"].between(0, 1).all()
    by_type = table.merge(_read(root, "truth/customers")[["person_id", "uplift_type"]])
    mean = by_type.groupby("uplift_type")["incremental"].mean()
    assert mean["persuadable"] > 0 > mean["sleeping_dog"]
    assert mean["sure_thing"] == 0 and mean["lost_cause"] == 0
