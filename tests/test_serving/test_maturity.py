"""Issue #26: the omnichannel maturity report (`nba maturity`) on the trained synthetic world.

Its counts against the event store's own files, a consent on a channel without any action is
worth nothing, the truth-based value of recognition beside the estimate, the page written and
self-contained, logged to MLflow; and the report on a data directory without truth.
"""

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from real_like import BANK_CONFIG, outbound_calls, run_nba

from features.config import DataConfig
from features.ingest.contract import DataDir
from features.ingest.event_store import open_store
from features.store.batch import BatchEngine
from features.store.definitions import FeatureConfig
from serving import maturity as M
from serving.catalogue import load_catalogue
from serving.config import MaturityConfig, PolicyConfig
from serving.policy import DecisionPolicy
from training.datasets import data_end


def _policy(world, catalogue=None) -> DecisionPolicy:
    return DecisionPolicy(
        world.result.bundle, "test", PolicyConfig(), DataConfig(), catalogue=catalogue
    )


def _inputs(world, policy=None, cfg=None) -> M.MaturityInputs:
    return M.MaturityInputs(
        world.data_dir,
        world.con,
        world.engine,
        policy or _policy(world),
        DataConfig(),
        FeatureConfig(),
        cfg or MaturityConfig(recognition_sample=200),
        world.end,
    )


def test_counts_match_the_event_store(trained_world):
    store = trained_world.data_dir.store
    identity = pd.read_parquet(store / "identity.parquet")
    events = pd.read_parquet(store / "events.parquet")
    rec = M.recognition(trained_world.con, DataConfig())
    sizes = identity.groupby("customer_id").size()
    assert rec.identifiers == len(identity)
    assert rec.customers == identity["customer_id"].nunique()
    assert rec.single_customers == int((sizes == 1).sum())
    single = events["customer_id"].map(sizes).eq(1)
    buys = events["event_type"].eq("purchase")
    assert rec.events == len(events) and rec.single_events == int(single.sum())
    assert rec.single_purchases == int((single & buys).sum())
    assert rec.single_revenue == pytest.approx(events.loc[single & buys, "amount"].sum())
    assert rec.shares["revenue"] == pytest.approx(
        events.loc[single & buys, "amount"].sum() / events.loc[buys, "amount"].sum()
    )
    seen = (
        events[~events["event_type"].isin(["sent", "holdout"])]
        .groupby("customer_id")["channel"]
        .nunique()
        .reindex(sizes.index, fill_value=0)
        .clip(upper=3)
        .value_counts()
    )
    assert rec.channels_seen["customers"].tolist() == [int(seen.get(k, 0)) for k in range(4)]
    assert rec.channels_seen["share"].sum() == pytest.approx(1.0)
    cut = pd.read_parquet(store / "shared_identifiers.parquet")
    assert rec.shared["identifiers"].sum() == len(cut)

    coverage = M.consent_coverage(trained_world.con, DataConfig(), FeatureConfig())
    now = coverage.sort_values("month").groupby("channel").tail(1).set_index("channel")
    feats = trained_world.features
    for ch in DataConfig().outbound_channels:
        # consent at the end of the last month is the consent feature just after the last event
        assert now.loc[ch, "consented"] == int(feats[f"{ch}_consent"].sum()), ch
        assert now.loc[ch, "known"] == len(feats)
        mine = events[events["channel"] == ch]
        assert coverage.loc[coverage["channel"] == ch, "grants"].sum() == int(
            (mine["event_type"] == "consent_granted").sum()
        )
        revoking = mine["event_type"].isin(FeatureConfig().revoking_event_types)
        assert coverage.loc[coverage["channel"] == ch, "revocations"].sum() == int(revoking.sum())


def test_a_consent_on_a_channel_without_actions_is_worth_nothing(trained_world):
    catalogue, _ = load_catalogue(None)
    no_push = catalogue.without({a.id for a in catalogue.actions if a.channel == "push"})
    inputs = _inputs(trained_world, _policy(trained_world, no_push))
    values = M.consent_values(inputs, trained_world.features)
    table = values.table.set_index("channel")
    assert table.loc["push", "actions"] == 0
    push = values.per_customer["push"]
    assert (push["value"] == 0).all()
    assert table.loc["push", ["value_mean", "value_top_decile", "loss_mean"]].eq(0).all()
    # a channel with actions: the policy earns something with the consent for some customers,
    # and the top decile is worth at least the mean
    email = table.loc["email"]
    assert email["actions"] > 0 and email["without_consent"] > 0
    assert values.per_customer["email"]["value"].abs().max() > 0
    assert email["value_top_decile"] >= email["value_mean"]
    # the real policy, given the consent, contacts the customer it is worth most for by e-mail
    top = int(
        np.argmax(
            np.where(
                has_email := trained_world.features["email_consent"] > 0.5,
                -np.inf,
                values.per_customer["email"]["value"],
            )
        )
    )
    assert not has_email.iloc[top]
    one = trained_world.features.iloc[[top]].copy()
    one["email_consent"] = 1.0
    decision = inputs.policy.decide(one, reasons=False).table.iloc[0]
    assert decision["channel"] == "email" and decision["score"] > 0
    # the customers with consent are valued by what losing it costs; without, by the gain
    per = values.per_customer["email"]
    assert len(per) == len(trained_world.features)
    has = trained_world.features["email_consent"].to_numpy() > 0.5
    assert (per["has_consent"].to_numpy() == has).all()


def test_the_report_on_the_synthetic_world(trained_world, tmp_path):
    """`nba maturity` end to end: the page, self-contained, with the truth beside the
    estimate, and the MLflow run with its metrics and artifacts."""
    root = trained_world.data_dir.root
    out = tmp_path / "report.html"
    config = tmp_path / "nba.yaml"
    config.write_text("maturity:\n  recognition_sample: 300\n")  # a quicker estimate
    done = run_nba(
        "maturity", "--data", str(root), "--config", str(config), "--out", str(out), check=0
    )
    said = " ".join(done.stdout.split())
    assert "from the truth" in said and "next step 1:" in said, done.stdout
    assert re.search(r"a sms consent is worth -?[\d,.]+ a year on average; the top decile", said)
    page = out.read_text()
    assert "<h2>Next steps, ranked by money</h2>" in page
    assert page.count('src="data:image/png;base64,') == 4
    # readable offline: nothing fetched from anywhere
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "<script" not in page
    truth = re.search(r"the truth \(merging every person's fragments\): <b>(-?[\d,.]+)</b>", page)
    estimate = re.search(r"The estimate, <b>(-?[\d,.]+)</b> a year", page)
    assert truth and estimate

    import mlflow

    from training import registry

    registry.configure_tracking(root)
    exp = mlflow.get_experiment_by_name("nba-maturity")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    run = max(runs, key=lambda r: r.info.start_time)
    metrics = run.data.metrics
    assert {"recognition_value_truth", "recognition_value_estimate"} <= set(metrics)
    assert f"{metrics['recognition_value_truth']:,.2f}" == truth.group(1)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"report.html", "recognition.png", "consent_coverage.png", "maturity.json"} <= artifacts


def test_data_use_of_the_last_run(trained_world, tmp_path):
    """Each decision's channels of history are the customer's channels with events before it;
    a decision citing another channel's history could use it."""
    inputs = _inputs(trained_world)
    use = M.data_use(inputs, trained_world.features, M.true_action_values(inputs))
    d = use.decisions
    assert len(d) == len(trained_world.features)
    events = pd.read_parquet(trained_world.data_dir.store / "events.parquet")
    some = d.sample(50, random_state=1)
    for _, row in some.iterrows():
        before = events[
            (events["customer_id"] == row["customer_id"]) & (events["ts"] < row["as_of"])
        ]
        assert row["history_channels"] == before["channel"].nunique()
    assert (d.loc[d["cross_channel_reason"], "history_channels"] >= 2).all()
    assert d.loc[d["action_id"] == "do_nothing", "reason_channels"].eq(0).all()
    acted = d["action_id"] != "do_nothing"
    assert d.loc[acted, "true_profit"].notna().all()
    assert use.summary["count"].iloc[0] + use.summary["count"].iloc[1] == len(d)


def test_the_report_without_truth(trained_world, tmp_path):
    """A contract-conforming data directory without truth/: the estimate alone, said so."""
    root = tmp_path / "world"
    shutil.copytree(
        trained_world.data_dir.root,
        root,
        ignore=shutil.ignore_patterns("truth", "decisions", "mlflow", "online.sqlite*"),
    )
    con = open_store(root)
    engine = BatchEngine(trained_world.engine.fs, con, customers="customers")
    inputs = M.MaturityInputs(
        DataDir(root),
        con,
        engine,
        _policy(trained_world),
        DataConfig(),
        FeatureConfig(),
        MaturityConfig(recognition_sample=200),
        data_end(con),
    )
    report = M.build(inputs)
    assert report.recognition_value.truth is None
    assert np.isfinite(report.recognition_value.estimate)
    assert "truth" not in " ".join(s.text for s in report.steps)
    assert "no logged run" in report.data_use.source

    from serving.maturity_report import write_report

    page = write_report(report, tmp_path / "r.html", root, log_mlflow=False).read_text()
    assert "No truth table in this data directory" in page


@pytest.mark.slow
def test_the_report_on_a_banks_outbound_calls(tmp_path):
    """A contract-conforming directory shaped like a real one (tests/real_like.py: one channel,
    `bank:` keys, a customers table, no consents, no truth): the report runs; consent is not
    valued (the policy does not require it) and age and job merge nobody."""
    root = outbound_calls(tmp_path / "bank", customers=800, seed=12)
    config = root / "nba.yaml"
    config.write_text(BANK_CONFIG)
    for command in ("ingest", "train"):
        run_nba(command, "--data", str(root), "--config", str(config), check=0)
    out = tmp_path / "report.html"
    done = run_nba(
        "maturity", "--data", str(root), "--config", str(config), "--out", str(out), check=0
    )
    said = " ".join(done.stdout.split())
    assert "800 identifiers -> 800 customers; 100.0% of revenue" in said
    assert "does not require consent" in said and "from the truth" not in said
    assert "recognition is worth 0.00 a year (estimate)" in said
    page = out.read_text()
    assert "No truth table in this data directory" in page
    assert "the attributes do not identify people" in page
    assert page.count('src="data:image/png;base64,') == 4
