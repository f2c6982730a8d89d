"""The training run on a small synthetic world: splits, calibration, registry, gate, uplift."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from features.config import DataConfig
from features.ingest.contract import DataDir
from features.ingest.event_store import ingest, open_store
from features.store.definitions import FeatureConfig
from features.synthetic.world import generate_world
from training import registry
from training.config import TrainingConfig
from training.metrics import expected_calibration_error
from training.train import train


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> DataDir:
    root = tmp_path_factory.mktemp("train") / "world"
    generate_world(root, customers=3000, days=365, seed=11, progress=False)
    data_dir = DataDir(root)
    ingest(data_dir, DataConfig())
    return data_dir


@pytest.fixture(scope="module")
def trained(world):
    con = open_store(world)
    cfg = TrainingConfig.model_validate({"models": {"max_contact_rows": 60_000}})
    result = train(world, DataConfig(), FeatureConfig(), cfg, con, say=lambda m: None)
    return result, con


def test_splits_are_by_time(trained):
    result, _ = trained
    for name in ("contacts", "snapshots"):
        described = result.bundle.trained_on[name]
        assert described["train_to"] < described["calibration_from"]
        assert described["calibration_to"] < described["test_from"]


def test_contacts_beyond_the_row_budget_inform_the_effects_but_never_the_test_slice(trained):
    result, _ = trained
    more, contacts = result.data.unfeatured_contacts, result.data.contacts
    assert len(more) > 0  # the fixture's budget (60,000 rows) leaves contacts out
    assert more["ts"].max() < contacts.test["ts"].min()
    featured = pd.concat([contacts.train, contacts.calibration, contacts.test])
    assert not set(more["event_id"]) & set(featured["event_id"])  # a contact is one or other
    refined = result.bundle.uplift.level_refinement_
    assert len(refined) and set(refined["key"]) <= {
        *featured["action_id"].dropna(),
        *featured["channel"],
        "0",
    }


def test_first_bundle_becomes_champion_and_loads_back_with_the_same_numbers(trained, world):
    result, _ = trained
    assert result.gate.promoted
    assert registry.alias_version(registry.CHAMPION) == result.version
    loaded = mlflow.pyfunc.load_model(registry.model_uri(registry.CHAMPION))
    example = _example_frame(result)
    np.testing.assert_allclose(
        loaded.predict(example).to_numpy(dtype=float),
        result.bundle.predict(example).to_numpy(dtype=float),
        rtol=1e-12,
    )


def test_logged_bundle_takes_rows_with_missing_features_as_the_bundle_does(trained):
    """A customer without a profile has no age, one never e-mailed no e-mail recency: MLflow's
    schema lets such rows through (five example rows had made every column required, and
    the age an integer)."""
    result, _ = trained
    loaded = mlflow.pyfunc.load_model(registry.model_uri(registry.CHAMPION))
    frame = _example_frame(result).head(4)
    assert frame["profile_age"].dtype == np.float64
    frame.loc[0, "profile_age"] = np.nan
    frame.loc[1, "email_contact_days_since"] = np.nan
    frame.loc[2, "profile_region"] = None
    np.testing.assert_allclose(
        loaded.predict(frame).to_numpy(dtype=float),
        result.bundle.predict(frame).to_numpy(dtype=float),
        rtol=1e-12,
    )


def test_logged_bundle_pins_the_libraries_its_models_need(trained):
    """A server rebuilding the bundle's environment must get LightGBM (inference missed it)."""
    from importlib.metadata import version

    path = mlflow.pyfunc.get_model_dependencies(registry.model_uri(registry.CHAMPION))
    pinned = set(Path(path).read_text().split())
    for package in ("lightgbm", "scikit-learn", "pandas", "mlflow"):
        assert f"{package}=={version(package)}" in pinned, pinned


def _example_frame(result) -> pd.DataFrame:
    """Real test-window contact rows, as the service will send them."""
    assert {"response", "purchase", "uplift"} <= set(result.reports)
    cols = [*result.bundle.customer_features, "channel", "action_id"]
    return result.data.contacts.test[cols].sample(50, random_state=0).reset_index(drop=True)


def test_calibration_improves_or_holds_ece(trained):
    result, _ = trained
    test = result.data.snapshots.test
    y = test["purchased"].to_numpy()
    raw = result.bundle.purchase.predict_uncalibrated(test)
    calibrated = result.bundle.purchase.predict_proba(test)
    assert expected_calibration_error(y, calibrated) <= expected_calibration_error(y, raw) + 0.002
    assert result.reports["purchase"].metrics["model"]["ece"] <= 0.02


def test_models_beat_their_heuristics(trained):
    result, _ = trained
    for family in ("response", "purchase"):
        m = result.reports[family].metrics
        assert m["model"]["auc"] > m["heuristic"]["auc"], family


def test_gate_refuses_a_worse_bundle_and_keeps_the_champion(trained, world):
    result, con = trained
    champion_before = registry.alias_version(registry.CHAMPION)
    weak = TrainingConfig.model_validate(
        {
            "models": {
                "params": {"n_estimators": 1, "num_leaves": 2},
                "gate_margin": 0.0,
                "max_contact_rows": 60_000,
            }
        }
    )
    worse = train(world, DataConfig(), FeatureConfig(), weak, con, say=lambda m: None)
    assert not worse.gate.promoted
    assert "kept as challenger" in worse.gate.reason
    assert registry.alias_version(registry.CHAMPION) == champion_before
    assert registry.alias_version(registry.CHALLENGER) == worse.version
    run = mlflow.get_run(worse.run_ids["bundle"])
    assert run.data.tags["gate_promoted"] == "False"


def test_gate_accepts_a_better_bundle():
    decision = registry.promotion_gate(0.80, 0.75, margin=0.01)
    assert decision.promoted
    assert not registry.promotion_gate(0.755, 0.75, margin=0.01).promoted


def test_uplift_report_shows_each_scorer_beside_the_true_effect(trained):
    """Per uplift type and ranking metric for the model, the response model and the oracle.

    Whether the model ranks persuadables above sleeping dogs is tested where the data can show
    it (test_uplift_heterogeneity.py): on this 3,000-customer world no heterogeneity is
    confirmed on the later slice, and the effect model rightly stays flat."""
    result, _ = trained
    metrics = result.reports["uplift"].metrics
    by_type = {"mean_uplift_persuadable", "mean_uplift_sleeping_dog"}
    ranking = {"corr_with_true_uplift", "auc_persuadable_over_sleeping_dog", "qini", "auuc"}
    for scorer in ("model", "response_model", "oracle"):
        assert by_type | ranking <= set(metrics[scorer]), scorer
    # the oracle's per-type means are the true effects: persuadables gain, sleeping dogs lose
    assert (
        metrics["oracle"]["mean_uplift_persuadable"]
        > 0
        > metrics["oracle"]["mean_uplift_sleeping_dog"]
    )
    assert metrics["oracle"]["auc_persuadable_over_sleeping_dog"] > 0.95


def test_training_on_data_without_contacts_trains_what_it_can(tmp_path, world):
    events = pd.read_parquet(world.store / "events.parquet")
    only = events[events["event_type"].isin(["purchase", "visit", "view"])]
    root = tmp_path / "purchases_only"
    root.mkdir()
    only.drop(columns=["customer_id"]).to_parquet(root / "events.parquet", index=False)
    data_dir = DataDir(root)
    ingest(data_dir, DataConfig())
    result = train(
        data_dir,
        DataConfig(),
        FeatureConfig(),
        TrainingConfig(),
        open_store(data_dir),
        say=lambda m: None,
    )
    assert result.bundle.response is None and result.bundle.uplift is None
    assert "response" in result.bundle.skipped and "uplift" in result.bundle.skipped
    assert result.bundle.purchase is not None


def test_expected_calibration_error_detects_miscalibration():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 20000)
    y = rng.random(20000) < p
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, p * 2) > 0.03


def test_uplift_run_records_the_effect_shape_it_chose_and_why(trained, world):
    result, _ = trained
    registry.configure_tracking(world.root)  # another test may have trained elsewhere
    run = mlflow.get_run(result.run_ids["uplift"])
    shape = result.bundle.uplift.effect_shape_
    assert run.data.params["effect_shape"] == shape
    losses = {k: run.data.metrics[f"r_loss_{k}"] for k in ("constant", "proportional", "line")}
    assert min(losses, key=losses.get) == shape
    surface = result.bundle.uplift.effect_surface_
    assert run.data.params["effect_surface"] == surface
    later = {
        k.removeprefix("later_r_loss_surface_"): v
        for k, v in run.data.metrics.items()
        if k.startswith("later_r_loss_surface_")
    }
    assert len(later) == 2 and min(later, key=later.get) == surface
