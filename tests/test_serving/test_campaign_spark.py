"""The campaign as a Spark job (local mode) gets the one-machine assignments on a small base:
the same actions, holdouts, scores and prices, found from per-partition sums."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from features.config import DataConfig
from serving.campaign import parse_campaign
from serving.campaign_job import run_campaign
from serving.catalogue import NOTHING
from serving.config import PolicyConfig
from serving.policy import DecisionPolicy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

ACTIONS = ["email_newin", "email_discount", "sms_flash", "push_newin", "dm_catalog"]


def binding_campaign(policy: DecisionPolicy, feats: pd.DataFrame, at: pd.Timestamp) -> dict:
    """The most used channel's capacity and the budget at half of what the unconstrained plan
    uses, so that both bind whatever the trained models (two limits: a few Spark jobs)."""
    free = parse_campaign({"name": "free", "actions": ACTIONS}, policy.catalogue, policy.data)
    acted = run_campaign(policy, free, feats, at).table
    acted = acted[acted["action_id"] != NOTHING]
    per_channel = acted["channel"].value_counts()
    return {
        "name": "spark_check",
        "actions": ACTIONS,
        "capacities": {per_channel.index[0]: int(per_channel.iloc[0] // 2)},
        "budget": round(float(acted["cost"].sum()) / 2, 3),
        "holdout": {"fraction": 0.25, "seed": 5},
    }


def _java() -> None:
    """Java for Spark, installed with apt-get if missing (the tests run as root in CI); a clear
    failure, not a skip, if that is impossible."""
    if shutil.which("java") or os.environ.get("JAVA_HOME"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "default-jre-headless"]
        if subprocess.run(cmd, capture_output=True, env=env, check=False).returncode:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
            subprocess.run(cmd, capture_output=True, env=env, check=False)
    if not shutil.which("java"):
        pytest.fail("the Spark test needs a Java runtime (apt-get install default-jre-headless)")


@pytest.fixture(scope="module")
def spark():
    _java()
    from features.store.spark_engine import local_spark

    session = local_spark("nba-campaign-test", shuffle_partitions=3)
    yield session
    session.stop()


def test_spark_job_equals_the_one_machine_run(trained_world, spark, tmp_path):
    from serving.spark_campaign import run_campaign_spark, write_spark

    policy = DecisionPolicy(trained_world.result.bundle, "test", PolicyConfig(), DataConfig())
    feats = trained_world.features
    raw = binding_campaign(policy, feats, trained_world.end)
    campaign = parse_campaign(raw, policy.catalogue, policy.data)
    local = run_campaign(policy, campaign, feats, trained_world.end, run="r1")

    frame = spark.createDataFrame(feats).repartition(3)  # customers split over partitions
    table, solution, jobs = run_campaign_spark(
        spark, policy, campaign, frame, trained_world.end, run="r1"
    )
    target = write_spark(table, tmp_path / "spark-out")
    got = pd.read_parquet(target)

    assert jobs["price_search_jobs"] > 0
    np.testing.assert_array_equal(solution.prices, local.solution.prices)
    assert solution.objective == pytest.approx(local.solution.objective, rel=1e-12)
    a = local.table.set_index("customer_id").sort_index()
    b = got.set_index("customer_id").sort_index()
    assert a.index.equals(b.index)
    assert (a["action_id"] == b["action_id"]).all()
    assert (a["holdout"] == b["holdout"]).all()
    assert (a["decision_id"] == b["decision_id"]).all()
    assert (a["send_hour"] == b["send_hour"]).all()
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b["logged_propensity"], a["logged_propensity"])
    # the limits bind, so the prices did work
    assert (solution.prices > 0).any()
    acted = b[b["action_id"] != "do_nothing"]
    assert acted["cost"].sum() <= raw["budget"] + 1e-9
    for channel, n in raw["capacities"].items():
        assert (acted["channel"] == channel).sum() <= n
