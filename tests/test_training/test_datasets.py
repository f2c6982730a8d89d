"""Point-in-time correctness of features and labels: nothing at or after t in features, nothing
at or before t in labels."""

import duckdb
import numpy as np
import pandas as pd
import pytest

from features.config import DataConfig
from features.store.batch import BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from training.config import LabelConfig
from training.datasets import (
    contact_training_set,
    most_recent_per_action,
    snapshot_training_set,
)

T = pd.Timestamp("2025-03-01 12:00", tz="UTC")
US = pd.Timedelta(microseconds=1)
H = pd.Timedelta(days=7)


def _events(rows: list[tuple]) -> pd.DataFrame:
    cols = [
        "event_id",
        "customer_id",
        "ts",
        "channel",
        "event_type",
        "action_id",
        "amount",
        "category",
        "propensity",
    ]
    df = pd.DataFrame(rows, columns=cols)
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


@pytest.fixture
def con():
    c = duckdb.connect()
    c.sql("SET TimeZone='UTC'")
    yield c
    c.close()


def _engine(con, events):
    con.register("events", events)
    return BatchEngine(FeatureSet(DataConfig(), FeatureConfig()), con)


def test_snapshot_features_and_labels_respect_the_cut_off(con):
    ev = _events(
        [
            ("before", "c1", T - US, "web", "purchase", None, 10.0, "home", None),
            ("at", "c1", T, "web", "purchase", None, 100.0, "home", None),
            ("after", "c1", T + US, "web", "purchase", None, 1000.0, "home", None),
            ("horizon_end", "c1", T + H, "store", "purchase", None, 5.0, "home", None),
            ("past_horizon", "c1", T + H + US, "store", "purchase", None, 7.0, "home", None),
            ("late", "c1", T + pd.Timedelta(days=30), "web", "visit", None, None, None, None),
        ]
    )
    engine = _engine(con, ev)
    table, report = snapshot_training_set(con, engine, DataConfig(), LabelConfig(), times=[T])
    row = table.set_index("customer_id").loc["c1"]
    # features: only the event strictly before t
    assert row["all_purchase_count"] == 1
    assert row["all_spend_sum"] == pytest.approx(10.0)
    assert row["web_purchase_days_since"] == pytest.approx(1e-6 / 86400)
    # labels: (t, t + horizon] holds the event just after t and the one at t + horizon only
    assert bool(row["purchased"])
    assert row["spend"] == pytest.approx(1000.0 + 5.0)
    assert report.rows == 1


def test_snapshots_streamed_to_parquet_equal_the_table_in_memory(con, tmp_path, monkeypatch):
    """Written a slice at a time (slices smaller than a snapshot here), two snapshots hold the
    same rows, features and labels as the table built in memory."""
    import training.datasets as datasets

    monkeypatch.setattr(datasets, "WRITE_ROWS", 2)
    rows = [
        (
            f"e{i}",
            f"c{i % 5}",
            T - pd.Timedelta(days=40 - i),
            "web",
            kind,
            None,
            amount,
            "home",
            None,
        )
        for i, (kind, amount) in enumerate(
            [("purchase", 10.0 + i) if i % 3 else ("visit", None) for i in range(30)]
        )
    ]
    engine = _engine(con, _events(rows))
    times = [T - pd.Timedelta(days=20), T - pd.Timedelta(days=10)]
    table, report = snapshot_training_set(con, engine, DataConfig(), LabelConfig(), times=times)
    out = tmp_path / "snapshots.parquet"
    nothing, streamed = snapshot_training_set(
        con, engine, DataConfig(), LabelConfig(), times=times, out=out
    )
    assert nothing is None and streamed.rows == report.rows == len(table) > 4
    written = pd.read_parquet(out)
    assert written["purchased"].any() and not written["purchased"].all()
    pd.testing.assert_frame_equal(written, table, check_dtype=False)


def test_customer_with_events_only_after_t_is_not_in_the_snapshot(con):
    ev = _events(
        [
            ("a", "c1", T - US, "web", "visit", None, None, None, None),
            ("b", "c2", T, "web", "visit", None, None, None, None),
            ("c", "c2", T + pd.Timedelta(days=20), "web", "visit", None, None, None, None),
        ]
    )
    engine = _engine(con, ev)
    table, _ = snapshot_training_set(con, engine, DataConfig(), LabelConfig(), times=[T])
    assert table["customer_id"].tolist() == ["c1"]


def test_contact_rows_see_only_earlier_events_and_label_their_windows(con):
    sent = T
    ev = _events(
        [
            (
                "old_click",
                "c1",
                sent - pd.Timedelta(days=1),
                "email",
                "click",
                "a0",
                None,
                None,
                None,
            ),
            ("same_ts_click", "c1", sent, "email", "click", "a1", None, None, None),
            ("send", "c1", sent, "email", "sent", "a1", None, None, 0.4),
            ("click", "c1", sent + pd.Timedelta(days=3), "email", "click", "a1", None, None, None),
            ("buy", "c1", sent + pd.Timedelta(days=5), "web", "purchase", None, 80.0, "home", None),
            ("hold", "c2", sent, "email", "holdout", "a1", None, None, 0.05),
            (
                "late_click",
                "c2",
                sent + pd.Timedelta(days=3) + US,
                "email",
                "click",
                None,
                None,
                None,
                None,
            ),
            ("end", "c2", sent + pd.Timedelta(days=60), "web", "visit", None, None, None, None),
        ]
    )
    engine = _engine(con, ev)
    table, report = contact_training_set(con, engine, DataConfig(), LabelConfig())
    rows = table.set_index("event_id")
    c1, c2 = rows.loc["send"], rows.loc["hold"]
    # the click at the same instant as the send is not before it: one click in the features
    assert c1["email_response_decayed_90d"] == pytest.approx(np.exp(-np.log(2) / 90))
    assert bool(c1["treated"]) and not bool(c2["treated"])
    assert c1["propensity"] == pytest.approx(0.4)
    assert bool(c1["responded"]) and bool(c1["purchased"]) and c1["spend"] == pytest.approx(80.0)
    # a click 1 us past the attribution window is not a response
    assert not bool(c2["responded"]) and not bool(c2["purchased"])
    assert report.rows == 2


def test_contacts_whose_horizon_passes_the_data_end_are_dropped_and_counted(con):
    ev = _events(
        [
            ("send1", "c1", T, "sms", "sent", "s", None, None, 0.5),
            ("send2", "c1", T + pd.Timedelta(days=9), "sms", "sent", "s", None, None, 0.5),
            ("end", "c1", T + pd.Timedelta(days=10), "web", "visit", None, None, None, None),
        ]
    )
    engine = _engine(con, ev)
    table, report = contact_training_set(con, engine, DataConfig(), LabelConfig())
    assert table["event_id"].tolist() == ["send1"]
    assert report.dropped_censored == 1


def test_contact_budget_keeps_each_actions_most_recent_rows_and_rare_actions_whole():
    n = 1080
    action = np.array(["email_a"] * 1000 + ["dm_b"] * 50 + [None] * 30, dtype=object)
    order = np.random.default_rng(0).permutation(n)
    rows = pd.DataFrame(
        {
            "ts": pd.date_range("2025-01-01", periods=n, freq="h", tz="UTC"),
            "action_id": action[order],
            "channel": np.where(pd.isna(action[order]), "call", "email"),
        }
    )
    kept = rows[most_recent_per_action(rows, 300)]
    assert len(kept) == 300
    assert kept["ts"].is_monotonic_increasing  # still in time order
    counts = kept["action_id"].fillna("no action").value_counts()
    assert counts["dm_b"] == 50 and counts["no action"] == 30 and counts["email_a"] == 220
    emails = rows[rows["action_id"] == "email_a"]
    assert kept.loc[kept["action_id"] == "email_a", "ts"].min() == emails["ts"].iloc[-220]
    # a budget smaller than every action: an equal share each
    assert rows[most_recent_per_action(rows, 60)]["action_id"].fillna(
        "-"
    ).value_counts().tolist() == [
        20,
        20,
        20,
    ]
