"""`nba campaign` on the trained test world: limits and hard rules hold, the LP agrees, the
holdouts are the configured share, the files appear whole or not at all, the report reads
offline and is in MLflow, and the logged campaign's effect is measured from its holdouts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from typer.testing import CliRunner

from features.config import DataConfig
from features.ingest.contract import EVENT_SCHEMA, DataDir
from features.ingest.event_store import ingest, open_store
from serving.assignment import solve_lp
from serving.campaign import parse_campaign
from serving.campaign_job import ASSIGNMENTS, SUMMARY, run_campaign, summary
from serving.catalogue import NOTHING
from serving.cli import app
from serving.config import PolicyConfig
from serving.contact_policy import cap_column, consent_column, eligibility
from serving.policy import DecisionPolicy

runner = CliRunner(env={"COLUMNS": "200"})

# limits that bind on the test world (3,000 people, about 5,000 resolved customers)
TIGHT = {
    "name": "test_tight",
    "actions": [
        "email_discount",
        "email_newin",
        "email_loyalty",
        "sms_flash",
        "push_newin",
        "dm_catalog",
        "dm_winback",
        "call_winback",
    ],
    "capacities": {"direct_mail": 400, "sms": 150, "email": 700, "call_centre": 20},
    "caps": {"dm_winback": 60},
    "budget": 350,
    "holdout": {"fraction": 0.3, "actions": {"dm_catalog": 0.2}, "seed": 3},
}
VARIANTS = {
    "tight": TIGHT,
    "budget only": {**TIGHT, "capacities": {}, "caps": {}, "budget": 30},
    "channels only": {**TIGHT, "budget": None, "capacities": {"direct_mail": 150, "email": 300}},
    "responses": {**TIGHT, "objective": "responses"},
}


@pytest.fixture(scope="module")
def policy(trained_world) -> DecisionPolicy:
    return DecisionPolicy(trained_world.result.bundle, "test", PolicyConfig(), DataConfig())


@pytest.fixture(scope="module")
def runs(trained_world, policy):
    out = {}
    for name, raw in VARIANTS.items():
        campaign = parse_campaign(raw, policy.catalogue, policy.data)
        out[name] = run_campaign(policy, campaign, trained_world.features, trained_world.end)
    return out


def _usage(table: pd.DataFrame, campaign) -> dict[str, float]:
    acted = table[table["action_id"] != NOTHING]
    used = {f"{c} capacity": float((acted["channel"] == c).sum()) for c in campaign.capacities}
    used |= {f"{a} cap": float((acted["action_id"] == a).sum()) for a in campaign.caps}
    if campaign.budget is not None:
        used["budget"] = float(acted["cost"].sum())
    return used


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_capacities_caps_and_budget_are_never_exceeded(runs, variant):
    run = runs[variant]
    c = run.campaign
    used = _usage(run.table, c)
    limit = {f"{ch} capacity": n for ch, n in c.capacities.items()}
    limit |= {f"{a} cap": n for a, n in c.caps.items()}
    if c.budget is not None:
        limit["budget"] = c.budget
    for name, n in limit.items():
        assert used[name] <= n + 1e-9, (name, used[name], n)
    assert any(used[n] >= 0.98 * limit[n] for n in limit), f"nothing binds: {used} of {limit}"
    assert run.table["customer_id"].is_unique and len(run.table) == len(run.scores)
    assert set(run.table["action_id"]) <= {*c.actions, NOTHING}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hard_rules_are_never_broken(trained_world, policy, runs, variant):
    """Every assignment is allowed by the contact policy on the whole catalogue, has consent
    on its channel, and leaves the channel's contact count within its cap."""
    table = runs[variant].table
    feats = trained_world.features.set_index("customer_id").loc[table["customer_id"]]
    feats = feats.reset_index()
    el = eligibility(
        feats, trained_world.end, policy.catalogue, policy.cfg.contact_policy, DataConfig(), False
    )
    acted = np.flatnonzero(table["action_id"].to_numpy() != NOTHING)
    col = pd.Index(policy.catalogue.ids).get_indexer(table["action_id"].iloc[acted])
    assert el.allowed[acted, col].all()
    for channel, rows in table.iloc[acted].groupby("channel").groups.items():
        f = feats.loc[rows]
        assert (f[consent_column(channel)] > 0.5).all(), channel
        for cap in policy.cfg.contact_policy.caps:
            if cap.channel in (None, channel):
                assert (f[cap_column(cap)].fillna(0) + 1 <= cap.max_contacts).all()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_within_half_a_percent_of_the_lp_optimum(runs, variant):
    run = runs[variant]
    lp = solve_lp(run.scores.objective, run.limits)
    ours = run.solution.objective
    assert ours <= lp.objective + 1e-6
    assert ours >= 0.995 * lp.objective, (ours, lp.objective)


def test_holdout_share_is_within_its_binomial_interval(runs):
    run = runs["tight"]
    acted = run.table[run.table["action_id"] != NOTHING]
    checked = 0
    for action, g in acted.groupby("action_id"):
        f = run.campaign.holdout.of(action)
        k, n = int(g["holdout"].sum()), len(g)
        if n < 30:
            continue
        lo, hi = stats.binom.ppf([0.0005, 0.9995], n, f)
        assert lo <= k <= hi, (action, k, n, f)
        checked += 1
        held = g[g["holdout"]]
        assert (held["logged_as"] == "holdout").all() and (held["logged_propensity"] == f).all()
        sent = g[~g["holdout"]]
        assert (sent["logged_as"] == "sent").all()
        assert np.allclose(sent["logged_propensity"], 1 - f)
    assert checked >= 3
    # the draw is by (seed, customer): the same customers again, a different seed others
    again = run_campaign_again(run, seed=run.campaign.holdout.seed)
    assert (again["holdout"].to_numpy() == run.table["holdout"].to_numpy()).all()
    other = run_campaign_again(run, seed=run.campaign.holdout.seed + 1)
    assert (other["holdout"].to_numpy() != run.table["holdout"].to_numpy()).any()


def run_campaign_again(run, seed: int) -> pd.DataFrame:
    from serving.campaign_job import assignment_columns

    campaign = run.campaign.model_copy(
        update={"holdout": run.campaign.holdout.model_copy(update={"seed": seed})}
    )
    versions = {"model_version": "t", "policy_version": "t", "campaign_version": "t"}
    return pd.DataFrame(
        assignment_columns(run.scores, run.choice, campaign, run.offered, versions, "again")
    )


def _write_campaign(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if v is not None}))
    return path


def test_nba_campaign_writes_assignments_summary_and_an_offline_report(trained_world, tmp_path):
    import mlflow

    from training import registry

    file = _write_campaign(tmp_path / "c.yaml", {**TIGHT, "name": "test_cli"})
    out = tmp_path / "out"
    root = str(trained_world.data_dir.root)
    args = ["campaign", "--data", root, "--campaign", str(file), "--out", str(out)]
    result = runner.invoke(app, [*args, "--exact-max", "100000"])
    assert result.exit_code == 0, result.output
    assert "is worth" in result.output and "exact LP (HiGHS)" in result.output
    table = pd.read_parquet(out / ASSIGNMENTS)
    assert len(table) == len(trained_world.features)
    info = json.loads((out / SUMMARY).read_text())
    assert {c["name"] for c in info["constraints"]} >= {"budget", "direct_mail capacity"}
    page = (out / "report.html").read_text()
    assert page.count("<svg") >= 4
    for plan in ("optimised (ours)", "everyone on e-mail", "top decile on", "today's greedy fill"):
        assert plan in page
    assert "true profit" in page  # the synthetic world has a truth table
    # nothing loaded from outside: no source, link, stylesheet or font but the page itself
    assert not re.search(
        r"(src|href)\s*=\s*[\"'](https?:)?//|url\(\s*[\"']?(https?:)?//|@import", page
    )
    plans = pd.read_csv(out / "plans.csv")
    assert plans["within limits"].all()
    ours = plans.set_index("plan").loc["optimised (ours)", "expected profit"]
    assert ours >= plans["expected profit"].max() - 1e-6  # optimal for its own objective
    assert plans["true profit"].notna().all()

    registry.configure_tracking(trained_world.data_dir.root)
    exp = mlflow.get_experiment_by_name("nba-campaigns")
    found = mlflow.search_runs([exp.experiment_id], filter_string="params.campaign = 'test_cli'")
    assert len(found) >= 1
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(found.iloc[0]["run_id"])}
    assert {"report.html", "plans.svg", "limits.svg", "scores.svg", "per_action.svg"} <= artifacts


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"capacities": {"call_centre": -5}}, "capacities"),
        ({"actions": ["email_newin", "no_such_offer"]}, "actions"),
        ({"budget": "a lot"}, "budget"),
        ({"actions": []}, "actions"),
    ],
)
def test_a_malformed_campaign_is_refused_by_the_command_naming_the_field(
    trained_world, tmp_path, change, field
):
    file = _write_campaign(tmp_path / "bad.yaml", {**TIGHT, **change})
    result = runner.invoke(
        app,
        ["campaign", "--data", str(trained_world.data_dir.root), "--campaign", str(file)],
    )
    assert result.exit_code == 2, result.output
    assert f"{field}" in result.output and "invalid campaign" in result.output
    assert not (trained_world.data_dir.root / "campaigns" / TIGHT["name"]).exists()


def test_a_killed_run_leaves_no_file_that_looks_finished(trained_world, tmp_path):
    """Kill -9 at several moments: assignments.parquet and campaign.json are either absent or
    whole (the summary only beside a complete table); no temporary file is mistaken for them."""
    file = _write_campaign(tmp_path / "c.yaml", {**TIGHT, "name": "test_kill"})
    cmd = [
        sys.executable,
        "-m",
        "serving.cli",
        "campaign",
        "--data",
        str(trained_world.data_dir.root),
        "--campaign",
        str(file),
        "--no-report",
    ]
    for delay in (4.0, 8.0, 16.0):
        out = tmp_path / f"out-{delay}"
        proc = subprocess.Popen(
            [*cmd, "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and proc.poll() is None:
            # kill the moment a temporary file appears, if it does before the deadline
            if out.exists() and any(p.name.endswith(".tmp") for p in out.iterdir()):
                break
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        final = out / ASSIGNMENTS
        if final.exists():
            assert len(pd.read_parquet(final)) == len(trained_world.features)
        if (out / SUMMARY).exists():
            assert final.exists()
    # rerun into the first killed run's folder: it finishes with the uninterrupted run's result,
    # decision ids included (a run's id comes from its inputs)
    rerun = tmp_path / "out-4.0"
    subprocess.run(
        [*cmd, "--out", str(rerun)],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    from serving.campaign import load_campaign
    from serving.policy import load_policy

    served = load_policy(trained_world.data_dir.root, PolicyConfig(), DataConfig())
    plan, text = load_campaign(file, served.catalogue, served.data)
    clean = run_campaign(served, plan, trained_world.features, trained_world.end, text=text)
    clean.table.to_parquet(tmp_path / "clean.parquet", index=False)
    pd.testing.assert_frame_equal(
        pd.read_parquet(rerun / ASSIGNMENTS), pd.read_parquet(tmp_path / "clean.parquet")
    )
    expected = json.loads(json.dumps(summary(clean), default=float))
    assert json.loads((rerun / SUMMARY).read_text()) == expected
    # the product's own guarantee, checked without timing luck: a write that fails half-way
    from serving.campaign_job import write_atomically

    target = tmp_path / "atomic" / ASSIGNMENTS

    def half_then_fail(p: Path) -> None:
        p.write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(target, half_then_fail)
    assert not target.exists() and not list(target.parent.iterdir())


def _copy_world(world, dest: Path) -> DataDir:
    for part in ("events", "customers", "truth", "mlflow"):
        shutil.copytree(world.data_dir.root / part, dest / part)
    copy = DataDir(dest)
    ingest(copy, DataConfig())
    return copy


def _follow_up_purchases(copy: DataDir, horizon_days: float, seed: int) -> pd.DataFrame:
    """What happens after the campaign in the synthetic world: each logged customer buys with
    the truth's probability (contacted: P(buy | contacted with the action), held out: P(buy |
    not)), at the true order value, within the horizon after the send."""
    from training.oracle import load_truth

    con = open_store(copy)
    logged = pd.concat(
        [pd.read_parquet(p) for p in (copy.root / "events").glob("decisions-c-*.parquet")]
    )
    truth = load_truth(copy, con)
    ca = con.sql(
        f"SELECT person_id, action_id, p_purchase_treated, p_purchase_control, expected_value "
        f"FROM read_parquet('{copy.truth / 'customer_actions'}/*.parquet')"
    ).df()
    ids = con.sql("SELECT identifier, customer_id FROM identity").df().set_index("identifier")
    logged["customer_id"] = ids["customer_id"].reindex(logged["customer_key"]).to_numpy()
    logged["person_id"] = truth.person_of_customer.reindex(logged["customer_id"]).to_numpy()
    m = logged.merge(ca, on=["person_id", "action_id"], how="inner")
    rng = np.random.default_rng(seed)
    p = np.where(m["event_type"] == "sent", m["p_purchase_treated"], m["p_purchase_control"])
    bought = rng.random(len(m)) < p
    b = m[bought]
    ts = pd.to_datetime(b["ts"], utc=True) + pd.to_timedelta(
        rng.random(len(b)) * horizon_days * 0.9, unit="D"
    )
    ts = ts.dt.floor("us").astype("datetime64[us, UTC]")
    events = pd.DataFrame(
        {
            "event_id": "f-" + b["event_id"].astype(str),
            "ts": ts.to_numpy(),
            "customer_key": b["customer_key"].to_numpy(),
            "link_key": pd.Series([None] * len(b), dtype="string").to_numpy(),
            "channel": "web",
            "event_type": "purchase",
            "action_id": pd.Series([None] * len(b), dtype="string").to_numpy(),
            "amount": b["expected_value"].to_numpy(),
            "category": pd.Series([None] * len(b), dtype="string").to_numpy(),
            "propensity": np.full(len(b), np.nan),
        }
    )
    pq.write_table(
        pa.Table.from_pandas(events, schema=EVENT_SCHEMA, preserve_index=False),
        copy.root / "events" / "followup.parquet",
    )
    m["true_uplift"] = m["p_purchase_treated"] - m["p_purchase_control"]
    return m


def test_logged_campaign_measured_from_its_holdouts(trained_world, tmp_path):
    copy = _copy_world(trained_world, tmp_path / "world")
    raw = {**TIGHT, "name": "test_results", "holdout": {"fraction": 0.5, "seed": 11}}
    file = _write_campaign(tmp_path / "c.yaml", raw)
    root = str(copy.root)
    args = ["campaign", "--data", root, "--campaign", str(file), "--no-report", "--log"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "out" / ASSIGNMENTS)
    logged = table[table["logged_as"] != ""]
    horizon = 14.0
    truth = _follow_up_purchases(copy, horizon, seed=1)
    ingest(copy, DataConfig())
    csv = tmp_path / "results.csv"
    result = runner.invoke(
        app,
        [
            "campaign-results",
            "--data",
            root,
            "--campaign",
            "test_results",
            "--horizon-days",
            str(horizon),
            "--level",
            "0.99",
            "--out",
            str(csv),
        ],
    )
    assert result.exit_code == 0, result.output
    res = pd.read_csv(csv).set_index("action_id")
    everything = res.loc["all actions"]
    assert everything["sent"] + everything["held_out"] == len(logged)
    assert everything["held_out"] == logged["holdout"].sum()
    # the truth's mean uplift of the logged customers lies in the measured interval
    true_effect = truth["true_uplift"].mean()
    assert everything["uplift_low"] <= true_effect <= everything["uplift_high"], (
        everything.to_dict(),
        true_effect,
    )
    assert everything["expected_uplift"] == pytest.approx(logged["uplift"].mean())
    for action in logged["action_id"].unique():
        assert action in res.index
