"""The uplift learners: the effects they find, how they refine them, and old pickles."""

import numpy as np
import pandas as pd
import pytest


def _randomised(n: int, effect, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, ...]:
    """A randomised e-mail experiment whose effect is `effect(p0)` on the base rate p0; also
    returns the true effect per row."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    p0 = 1.0 / (1.0 + np.exp(-(-2.0 + 1.2 * x)))
    t = rng.random(n) < 0.5
    y = rng.random(n) < p0 + t * effect(p0)
    X = pd.DataFrame({"x": x, "channel": "email", "action_id": "email_offer"})
    return X, t, y, effect(p0)


def _fit(X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
    from training.config import LGBMParams
    from training.models import UpliftRLearner

    later = np.arange(len(X)) >= int(0.7 * len(X))
    params = LGBMParams(n_estimators=100, num_leaves=7, n_jobs=1)
    return UpliftRLearner(params).fit(X[~later], t[~later], y[~later], X[later], t[later], y[later])


def test_r_learner_finds_an_effect_that_scales_with_the_baseline():
    # Hillstrom-like: the e-mail adds 40% to whatever the customer would have done anyway
    X, t, y, true = _randomised(60_000, lambda p0: 0.4 * p0)
    model = _fit(X, t, y)
    assert model.effect_shape_ in ("proportional", "line")
    uplift = model.predict_uplift(X)
    assert pd.Series(uplift).corr(pd.Series(true), method="spearman") > 0.9
    assert abs(uplift.mean() - true.mean()) < 0.3 * true.mean()


def test_r_learner_effect_of_an_unseen_action_is_its_channels():
    X, t, y, _ = _randomised(30_000, lambda p0: 0.05 + 0 * p0)
    model = _fit(X, t, y)
    new = X.head(5).assign(action_id="email_new_offer")
    np.testing.assert_allclose(model.predict_uplift(new), model.predict_uplift(X.head(5)))
    assert abs(model.predict_uplift(X).mean() - 0.05) < 0.02


def test_contacts_without_features_sharpen_each_actions_effect():
    """Few feature rows, many labelled contacts without features: the action's effect comes
    from both, weighted by precision, and lands near the truth the feature rows alone miss."""
    from training.config import LGBMParams
    from training.models import UpliftParams, UpliftRLearner

    rng = np.random.default_rng(3)
    effects = {"email_a": 0.03, "email_b": 0.0}

    def contacts(n: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        action = rng.choice(list(effects), n)
        x = rng.normal(size=n)
        t = rng.random(n) < 0.5
        p = 0.10 + 0.03 * x.clip(-2, 2) + t * pd.Series(action).map(effects).to_numpy()
        X = pd.DataFrame({"x": x, "channel": "email", "action_id": action})
        return X, t, rng.random(n) < p

    X, t, y = contacts(6_000)
    X_more, t_more, y_more = contacts(400_000)
    later = np.arange(len(X)) >= 4_000
    params = LGBMParams(n_estimators=50, num_leaves=7, n_jobs=1)

    def fit(uplift: UpliftParams) -> UpliftRLearner:
        return UpliftRLearner(params, uplift).fit(
            X[~later], t[~later], y[~later], X[later], t[later], y[later],
            X_more=X_more[["channel", "action_id"]], t_more=t_more, y_more=y_more,
        )  # fmt: skip

    constant = {"shape_folds": 2, "n_estimators": 1}
    alone = fit(UpliftParams(levels_from_unfeatured=False, **constant))
    both = fit(UpliftParams(**constant))
    assert alone.level_refinement_ is None
    table = both.level_refinement_.set_index("key")
    for action, effect in effects.items():
        row = table.loc[action]
        assert row["unfeatured_rows"] > 150_000
        assert row["unfeatured_se"] < row["features_se"] / 5
        # inverse-variance weighting: between the two, much nearer the precise one
        lo, hi = sorted([row["features_effect"], row["unfeatured_effect"]])
        assert lo <= row["effect"] <= hi
        assert abs(row["effect"] - effect) < 4 * row["unfeatured_se"]
        a = X.head(1).assign(action_id=action)
        np.testing.assert_allclose(both._action_effect(a)[0], row["effect"], atol=1e-12)
    assert abs(alone._action_effect(X.head(1).assign(action_id="email_a"))[0] - 0.03) > abs(
        both._action_effect(X.head(1).assign(action_id="email_a"))[0] - 0.03
    )


def test_trees_spread_a_refined_level_between_customers_but_keep_its_mean():
    """Feature rows that understate an effect which many contacts without features measure:
    trees fitted on the feature rows alone would pull the level back; it is kept instead."""
    from training.config import LGBMParams
    from training.models import UpliftParams, UpliftRLearner

    rng = np.random.default_rng(5)

    def contacts(n: int, effect: float) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        x = rng.normal(size=n)
        t = rng.random(n) < 0.5
        tau = effect * (1 + x.clip(-1, 1))  # heterogeneous, mean about `effect`
        X = pd.DataFrame({"x": x, "channel": "email", "action_id": "email_a"})
        return X, t, rng.random(n) < 0.10 + t * tau

    X, t, y = contacts(60_000, 0.0)
    X_more, t_more, y_more = contacts(2_000_000, 0.04)
    later = np.arange(len(X)) >= 40_000
    params = LGBMParams(n_estimators=50, num_leaves=7, n_jobs=1)
    uplift = UpliftParams(shape_folds=2, min_child_samples=500, reg_lambda=1.0)
    model = UpliftRLearner(params, uplift).fit(
        X[~later], t[~later], y[~later], X[later], t[later], y[later],
        X_more=X_more[["channel", "action_id"]], t_more=t_more, y_more=y_more,
    )  # fmt: skip
    row = model.level_refinement_.set_index("key").loc["email_a"]
    assert row["effect"] > 0.03  # the many contacts without features dominate the level
    assert model.model_.best_iteration_ > 1 and row["trees_shift"] < -0.005  # trees pulled
    np.testing.assert_allclose(model.predict_uplift(X).mean(), row["effect"], atol=1e-9)


def test_r_learner_pickled_before_effect_shapes_loads_and_predicts_the_same():
    import pickle

    X, t, y, _ = _randomised(20_000, lambda p0: 0.4 * p0)
    model = _fit(X, t, y)
    state = model.__dict__.copy()
    shape = state.pop("effect_shape_")
    state.pop("shape_losses_")
    state["effect_scales_with_baseline_"] = shape != "constant"  # how 6bf505a stored it
    old = object.__new__(type(model))
    old.__setstate__(state)
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.effect_shape_ == ("constant" if shape == "constant" else "line")
    # a proportional effect is a line with a = 0, so every shape predicts as before
    np.testing.assert_allclose(loaded.predict_uplift(X), model.predict_uplift(X))


def test_uplift_through_a_step_ranks_those_the_step_is_raised_for_first():
    from sklearn.metrics import roc_auc_score

    from training.config import LGBMParams
    from training.models import UpliftRLearner, UpliftThroughStep

    # a funnel: the e-mail raises visits only for x > 0; a visit converts 20% of the time
    rng = np.random.default_rng(3)
    n = 40_000
    x = rng.normal(size=n)
    t = rng.random(n) < 0.5
    moved = x > 0
    visit = rng.random(n) < 0.15 + 0.12 * (t & moved)
    converted = visit & (rng.random(n) < 0.2)
    X = pd.DataFrame({"x": x, "channel": "email"})
    later = np.arange(n) >= int(0.7 * n)
    params = LGBMParams(n_estimators=100, num_leaves=7, n_jobs=1)
    model = UpliftThroughStep(UpliftRLearner(params)).fit(
        X[~later], t[~later], visit[~later], converted[~later],
        X[later], t[later], visit[later], converted[later],
    )  # fmt: skip
    score = model.predict_uplift(X)
    assert roc_auc_score(moved, score) > 0.8
    # the effect on conversions where the visit is raised: 0.12 x 0.2
    assert abs(score[moved].mean() - 0.024) < 0.01
    assert abs(score[~moved].mean()) < 0.01
    with pytest.raises(ValueError, match="outcome without the step"):
        UpliftThroughStep(UpliftRLearner(params)).fit(
            X[~later], t[~later], visit[~later], ~visit[~later],
            X[later], t[later], visit[later], converted[later],
        )  # fmt: skip
