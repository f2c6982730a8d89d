"""Issue #27 at training: a horizon the history cannot label names the longest one it can; an
empty input and a missing bundle are one line and exit code 2."""

import pandas as pd
import pytest
from real_like import one_line_error, purchase_log, run_nba

from features.ingest.contract import DataDir
from features.ingest.event_store import open_store
from training.config import LabelConfig
from training.datasets import MIN_SNAPSHOTS, longest_horizon_days, snapshot_times

SHOP = (
    "data:\n  identity:\n    identifier_types: [shop]\n"
    "  channels:\n    - {name: store, identifier: shop}\n"
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A purchase-only log of 420 days, ingested with the shop's identifier type."""
    root = purchase_log(tmp_path_factory.mktemp("shop") / "shop", customers=600, seed=5)
    config = root / "nba.yaml"
    config.write_text(SHOP)
    run_nba("ingest", "--data", str(root), "--config", str(config), check=0)
    return root


def test_a_horizon_as_long_as_the_history_names_the_longest_possible(shop, tmp_path):
    config = tmp_path / "nba.yaml"
    config.write_text(SHOP + "training:\n  labels:\n    purchase_horizon_days: 400\n")
    line = one_line_error(run_nba("train", "--data", str(shop), "--config", str(config)), "train")
    con = open_store(DataDir(shop))
    longest = longest_horizon_days(con, LabelConfig(purchase_horizon_days=400))
    assert 300 < longest < 400
    assert "nothing could be trained" in line
    assert "complete 400-day purchase horizon" in line
    assert f"set training.labels.purchase_horizon_days to at most {longest}" in line
    assert "no outbound contacts (sent, holdout events)" in line  # why no response model
    # the longest is exact: it leaves the snapshots a time split needs, a day more does not
    assert len(snapshot_times(con, LabelConfig(purchase_horizon_days=longest))) >= MIN_SNAPSHOTS
    assert len(snapshot_times(con, LabelConfig(purchase_horizon_days=longest + 1))) < MIN_SNAPSHOTS


def test_an_events_file_without_rows_is_refused(tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    (data / "events.csv").write_text("event_id,ts,customer_key,channel,event_type\n")
    line = one_line_error(run_nba("ingest", "--data", str(data)), "ingest")
    assert "0 of 0 events accepted" in line and "the events files hold no rows" in line
    line = one_line_error(run_nba("train", "--data", str(data)), "train")
    assert "the events files hold no rows" in line


def test_evaluate_and_predict_without_a_bundle(shop):
    line = one_line_error(run_nba("evaluate", "--data", str(shop)), "evaluate")
    assert "no bundle has the alias 'champion': run `nba train` first" in line
    line = one_line_error(
        run_nba("predict", "--data", str(shop), "--config", str(shop / "nba.yaml")), "predict"
    )
    assert "run `nba train` first" in line


def test_a_missing_data_directory_is_one_line(tmp_path):
    line = one_line_error(run_nba("train", "--data", str(tmp_path / "nowhere")), "train")
    assert "does not exist" in line


def test_the_store_holds_the_shop_log(shop):
    """The fixture's ingest kept every row (the other tests depend on it)."""
    received = len(pd.read_csv(shop / "events.csv"))
    con = open_store(DataDir(shop))
    assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == received


def test_evaluate_on_a_horizon_the_history_cannot_label(shop, tmp_path):
    """Trained at 90 days, evaluated at 400: nothing to evaluate, said in one line with the
    longest horizon; at 90 days the notes of what was not evaluated follow the tables."""
    config = tmp_path / "nba.yaml"
    config.write_text(SHOP + "training:\n  labels:\n    purchase_horizon_days: 90\n")
    run_nba("train", "--data", str(shop), "--config", str(config), check=0)
    done = run_nba("evaluate", "--data", str(shop), "--config", str(config), check=0)
    assert "purchase: test window" in done.stdout
    assert "not evaluated (contacts): no outbound contacts" in " ".join(done.stdout.split())
    config.write_text(SHOP + "training:\n  labels:\n    purchase_horizon_days: 400\n")
    line = one_line_error(
        run_nba("evaluate", "--data", str(shop), "--config", str(config)), "evaluate"
    )
    longest = longest_horizon_days(open_store(DataDir(shop)), LabelConfig())
    assert "nothing to evaluate on this data" in line
    assert f"at most {longest}" in line
