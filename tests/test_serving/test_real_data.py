"""Issue #27 end to end: two data sets shaped like a first user's real ones go through
`nba ingest -> train -> evaluate -> predict` with nothing but a configuration file.

* a retailer's purchase log (keys `shop:00012`, one channel, no contacts, no profile);
* a bank's outbound calls (keys `bank:<n>`, a customers table, call_centre's response set to
  `purchase` by naming that one channel) and `nba decide` on it: the default catalogue's actions
  that cannot run on this data are left out and reported once; `--strict` makes it an error.
"""

import re
from pathlib import Path

import pandas as pd
import pytest
from real_like import BANK_CONFIG, one_line_error, outbound_calls, purchase_log, run_nba
from sklearn.metrics import roc_auc_score

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(after: str) -> str:
    """The YAML block that follows `after` in the README (its first-run section)."""
    found = re.search(re.escape(after) + r"\s*```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    assert found, f"README has no yaml block after {after!r}"
    return found.group(1)


SHOP = readme_block("this `shop.yaml`:")
SHOP_CATALOGUE = readme_block("`shop-catalogue.yaml`:")

MLFLOW_NOISE = ("INFO", "WARNING", "Successfully registered", "Created version", "Downloading")


def _quiet(done) -> None:
    """No MLflow chatter and no traceback in a successful command's output."""
    text = done.stdout + done.stderr
    assert not [w for w in MLFLOW_NOISE if w in text], text
    assert "Traceback" not in text


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = purchase_log(tmp_path_factory.mktemp("shop") / "shop", customers=1500, seed=11)
    (root / "nba.yaml").write_text(SHOP.replace("shop-catalogue.yaml", str(root / "cat.yaml")))
    (root / "cat.yaml").write_text(SHOP_CATALOGUE)
    return root


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    root = outbound_calls(tmp_path_factory.mktemp("bank") / "bank", customers=1500, seed=12)
    (root / "nba.yaml").write_text(BANK_CONFIG)
    return root


def test_a_purchase_log_goes_through_with_only_a_configuration_file(shop, tmp_path):
    config = str(shop / "nba.yaml")
    ingest = run_nba("ingest", "--data", str(shop), "--config", config, check=0)
    assert "fix:" not in ingest.stdout
    train = run_nba("train", "--data", str(shop), "--config", config, check=0)
    _quiet(train)
    assert "purchase: test window" in train.stdout and "value: test window" in train.stdout
    assert "skipped response: no outbound contacts (sent, holdout events)" in train.stdout
    assert "champion" in train.stdout
    evaluate = run_nba("evaluate", "--data", str(shop), "--config", config, check=0)
    _quiet(evaluate)
    auc = next(line for line in evaluate.stdout.splitlines() if line.strip("│ ").startswith("auc"))
    model_auc, heuristic_auc = (float(x) for x in auc.replace("│", " ").split()[1:3])
    assert 0.5 < model_auc <= 1 and 0.5 < heuristic_auc <= 1
    assert "recency" in evaluate.stdout and "bgnbd" in evaluate.stdout  # the baselines beside it
    out = tmp_path / "scores.parquet"
    as_of = "2026-01-15T00:00:00"
    predict = run_nba(
        "predict",
        "--data",
        str(shop),
        "--config",
        config,
        "--as-of",
        as_of,
        "--out",
        str(out),
        check=0,
    )
    _quiet(predict)
    said = " ".join(predict.stdout.split())  # rich wraps long lines
    assert "purchase horizon 90 days" in said
    assert "not in this bundle: response, uplift" in said
    scores = pd.read_parquet(out)
    assert not list(tmp_path.glob(".*.tmp"))  # renamed into place
    events = pd.read_csv(shop / "events.csv")
    before = events[pd.to_datetime(events["ts"]) < pd.Timestamp(as_of, tz="UTC")]
    assert len(scores) == before["customer_key"].nunique()  # everyone seen by then, once
    assert scores["customer_id"].is_unique
    assert (scores["as_of"] == pd.Timestamp(as_of, tz="UTC")).all()
    assert (scores["horizon_days"] == 90).all()
    assert scores["p_purchase"].between(0, 1).all()
    assert (scores["spend_if_purchase"] > 0).all()
    assert (
        scores["expected_value"] - scores["p_purchase"] * scores["spend_if_purchase"]
    ).abs().max() < 1e-9
    assert not [c for c in scores.columns if c.startswith(("p_response_", "uplift_"))]
    # BG/NBD's customer-base figures, which the purchase model also reads
    assert scores["p_alive"].between(0, 1).all() and (scores["expected_purchases"] >= 0).all()
    # deciding needs a model of contacts, which a purchase-only log cannot give: one line
    line = one_line_error(run_nba("decide", "--data", str(shop), "--config", config), "decide")
    assert "policy.scoring `uplift` needs an uplift model" in line
    # the propensity ranks: customers who bought in the 90 days after as_of scored higher
    after = events[
        (pd.to_datetime(events["ts"]) >= pd.Timestamp(as_of, tz="UTC"))
        & (pd.to_datetime(events["ts"]) < pd.Timestamp(as_of, tz="UTC") + pd.Timedelta(days=90))
    ]
    identity = pd.read_parquet(shop / "store" / "identity.parquet")
    buyers = set(identity[identity["identifier"].isin(after["customer_key"])]["customer_id"])
    bought = scores["customer_id"].isin(buyers)
    assert scores.loc[bought, "p_purchase"].mean() > scores.loc[~bought, "p_purchase"].mean()
    # nine months ahead from 90-day labels: BG/NBD's count model ranks next-270-day buyers
    early, nine_months = pd.Timestamp("2025-05-01", tz="UTC"), pd.Timedelta(days=270)
    far = tmp_path / "far.parquet"
    run_nba("predict", "--data", str(shop), "--config", config, "--as-of", "2025-05-01",
            "--days", "270", "--out", str(far), check=0)  # fmt: skip
    far_scores = pd.read_parquet(far)
    ts = pd.to_datetime(events["ts"])
    later = events[(ts >= early) & (ts < early + nine_months)]["customer_key"]
    buyers = set(identity[identity["identifier"].isin(later)]["customer_id"])
    p_far = far_scores["bgnbd_p_purchase_270d"]
    assert p_far.between(0, 1).all()
    assert roc_auc_score(far_scores["customer_id"].isin(buyers), p_far) > 0.7
    assert (p_far <= far_scores["p_alive"] + 1e-12).all()  # only the living buy


def test_outbound_calls_with_a_profile_go_through(bank, tmp_path):
    config = str(bank / "nba.yaml")
    ingest = run_nba("ingest", "--data", str(bank), "--config", config, check=0)
    said = " ".join(ingest.stdout.split())
    n = pd.read_csv(bank / "customers.csv")["customer_key"].nunique()
    assert (
        f"customers table: 5 profile column(s) (age, job, marital, education, loan) for "
        f"{n:,} of {n:,} customers with events" in said
    )
    train = run_nba("train", "--data", str(bank), "--config", config, check=0)
    _quiet(train)
    assert "response: test window" in train.stdout and "purchase: test window" in train.stdout
    evaluate = run_nba("evaluate", "--data", str(bank), "--config", config, check=0)
    _quiet(evaluate)
    assert "response: test window" in evaluate.stdout
    out = tmp_path / "scores.parquet"
    predict = run_nba(
        "predict", "--data", str(bank), "--config", config, "--out", str(out), check=0
    )
    _quiet(predict)
    scores = pd.read_parquet(out)
    assert len(scores) == pd.read_csv(bank / "customers.csv")["customer_key"].nunique()
    # responsiveness for the one outbound channel configured with a response... and the
    # other default outbound channels, which the configuration kept
    assert scores["p_response_call_centre"].between(0, 1).all()
    assert scores["p_response_call_centre"].std() > 0
    assert {"p_purchase", "expected_value"} <= set(scores.columns)


def test_decide_leaves_out_what_the_data_cannot_support_and_strict_refuses(bank, tmp_path):
    """The default catalogue's `email_loyalty` needs `profile_loyalty_tier`, which the bank's
    customers table lacks: left out, said once; with --strict the command stops in one line."""
    config = str(bank / "nba.yaml")
    out = tmp_path / "decisions.parquet"
    done = run_nba("decide", "--data", str(bank), "--config", config, "--out", str(out), check=0)
    said = [line for line in done.stdout.splitlines() if "left out of this run" in line]
    assert len([line for line in said if "email_loyalty" in line]) == 1, done.stdout
    assert "profile_loyalty_tier" in done.stdout
    decisions = pd.read_parquet(out)
    assert "email_loyalty" not in set(decisions["action_id"])
    assert (decisions["action_id"] != "do_nothing").any()
    line = one_line_error(
        run_nba("decide", "--data", str(bank), "--config", config, "--out", str(out), "--strict"),
        "decide",
    )
    assert "action 'email_loyalty'" in line and "profile_loyalty_tier" in line
    assert "(strict catalogue check)" in line
