"""`nba decide` end to end, and the closed loop: logged decisions come back as events."""

import shutil

import pandas as pd
from typer.testing import CliRunner

from features.config import DataConfig
from features.ingest.contract import DataDir
from features.ingest.event_store import ingest, open_store
from serving.cli import app
from serving.config import Exploration, PolicyConfig
from serving.decision_log import write_decision_log
from serving.policy import DecisionPolicy

runner = CliRunner(env={"COLUMNS": "200"})  # rich wraps at the terminal width


def test_decide_for_one_customer_prints_candidates_and_reasons(trained_world):
    cid = trained_world.features["customer_id"].iloc[0]
    result = runner.invoke(
        app, ["decide", "--data", str(trained_world.data_dir.root), "--customer", cid]
    )
    assert result.exit_code == 0, result.output
    assert cid in result.output and "candidates" in result.output and "reasons" in result.output


def test_decide_for_every_customer_writes_one_decision_each(trained_world, tmp_path):
    out = tmp_path / "decisions.parquet"
    result = runner.invoke(
        app, ["decide", "--data", str(trained_world.data_dir.root), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert len(table) == len(trained_world.features)
    assert set(table["customer_id"]) == set(trained_world.features["customer_id"])


def test_unknown_customer_is_a_clear_error(trained_world):
    result = runner.invoke(
        app, ["decide", "--data", str(trained_world.data_dir.root), "--customer", "email:nobody"]
    )
    assert result.exit_code != 0
    assert "neither a customer_id nor a known identifier" in result.output


def test_logged_decisions_return_as_events_once(trained_world, tmp_path):
    """Closed loop: sent/holdout events with their propensities reach the store; logging the same
    run twice adds nothing (the decision id is the event id)."""
    copy = DataDir(tmp_path / "world")
    for part in ("events", "customers"):
        shutil.copytree(trained_world.data_dir.root / part, copy.root / part)
    cfg = PolicyConfig(exploration=Exploration(mode="epsilon_greedy", epsilon=0.5, seed=1))
    policy = DecisionPolicy(trained_world.result.bundle, "test", cfg, DataConfig())
    table = policy.decide(trained_world.features, reasons=False).table
    acted = table[table["logged_as"] != ""]
    assert len(acted) > 0
    events_path, _ = write_decision_log(table, copy, trained_world.con)
    shutil.copy(events_path, events_path.with_name("again-" + events_path.name))
    ingest(copy, DataConfig())
    con = open_store(copy)
    back = con.sql(
        "SELECT event_id, customer_id, event_type, propensity AS propensity_back FROM events "
        f"WHERE event_id IN (SELECT unnest({list(acted['decision_id'])}))"
    ).df()
    assert len(back) == len(acted)
    merged = back.merge(acted, left_on="event_id", right_on="decision_id")
    assert (merged["event_type"] == merged["logged_as"]).all()
    assert (merged["customer_id_x"] == merged["customer_id_y"]).all()
    assert (merged["propensity_back"] - merged["logged_propensity"]).abs().max() < 1e-12
