"""The models' input encoding: what a serving frame becomes, whatever its dtypes."""

import numpy as np
import pandas as pd
import pytest

from training.encoding import FrameArrays, FrameEncoder


def test_encoder_codes_categories_as_at_fit_and_unseen_values_as_missing():
    fit = pd.DataFrame({"tier": ["gold", "silver", "gold"], "n": [1, 2, 3]})
    later = pd.DataFrame({"n": [5, 6, 7, 8], "tier": ["silver", "platinum", None, "gold"]})
    enc = FrameEncoder().fit(fit)
    out = enc.transform(later)
    assert list(out.columns) == ["tier", "n"]  # the fitted order, not the input's
    assert list(out["tier"].cat.categories) == ["gold", "silver"]
    assert out["tier"].tolist()[0] == "silver" and out["tier"].tolist()[3] == "gold"
    assert out["tier"].isna().tolist() == [False, True, True, False]
    np.testing.assert_array_equal(out["n"].to_numpy(), [5.0, 6.0, 7.0, 8.0])


@pytest.mark.parametrize("rows", [1, 3, 500])  # a customer's decision, and the factorised path
def test_models_predict_from_the_matrix_as_lightgbm_does_from_the_frame(rows):
    """The booster on `FrameEncoder.matrix` gives the numbers scikit-learn's and LightGBM's own
    frame handling give: categorical codes, unseen and missing levels, dates, integers."""
    from training.config import LGBMParams
    from training.models import CalibratedClassifier, ValueRegressor

    rng = np.random.default_rng(0)
    n = 3000

    def frame(k: int, tiers: list) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "x": rng.normal(size=k),
                "tier": rng.choice(tiers, k),
                "visits": rng.integers(0, 9, k),
                "signup": pd.Timestamp("2024-01-01", tz="UTC")
                + pd.to_timedelta(rng.integers(0, 700, k), unit="D"),
            }
        )

    X, X_cal = frame(n, ["gold", "silver", "bronze"]), frame(n, ["gold", "silver", "bronze"])
    logit = X["x"] + (X["tier"] == "gold") - (X["tier"] == "bronze") + 0.1 * X["visits"] - 1.0
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    params = LGBMParams(n_estimators=30, num_leaves=7, min_child_samples=20, n_jobs=1)
    clf = CalibratedClassifier(params).fit(X, y, X_cal, rng.random(n) < 0.4)
    reg = ValueRegressor(params).fit(X, logit.to_numpy(), X_cal, logit.to_numpy())
    later = frame(rows, ["gold", "silver", "platinum", None])  # an unseen level, a missing one
    # the frame LightGBM was trained on, coded here without the encoder
    levels = ["bronze", "gold", "silver"]
    coded = later.assign(
        tier=pd.Categorical(later["tier"].where(later["tier"].isin(levels)), categories=levels),
        visits=later["visits"].astype(float),
        signup=(later["signup"] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(days=1),
    )[clf.encoder_.columns_]
    np.testing.assert_array_equal(
        clf.predict_proba(later), clf.calibrator_.predict_proba(coded)[:, 1]
    )
    np.testing.assert_array_equal(
        clf.predict_uncalibrated(later), clf.model_.predict_proba(coded)[:, 1]
    )
    np.testing.assert_allclose(
        clf.contributions(later).to_numpy(), clf.model_.predict(coded, pred_contrib=True)
    )
    np.testing.assert_array_equal(reg.predict(later), np.clip(reg.model_.predict(coded), 0, None))
    # the same rows read once into arrays, taken in another order, as scoring takes its pairs
    order = np.arange(rows)[::-1]
    arrays = FrameArrays.of(later).take(order)
    expected = clf.calibrator_.predict_proba(coded.iloc[order])[:, 1]
    np.testing.assert_array_equal(clf.predict_proba(arrays), expected)
    np.testing.assert_array_equal(reg.predict(arrays), reg.predict(later)[order])
    # a column replaced in the arrays is read as the frame with that column replaced
    gold = arrays.with_columns({"tier": "gold"})
    np.testing.assert_array_equal(
        clf.predict_proba(gold), clf.predict_proba(later.iloc[order].assign(tier="gold"))
    )


def test_a_missing_model_column_is_named():
    enc = FrameEncoder().fit(pd.DataFrame({"tier": ["gold"], "n": [1.0]}))
    for later in (pd.DataFrame({"n": [2.0]}), FrameArrays.of(pd.DataFrame({"n": [2.0]}))):
        with pytest.raises(ValueError, match="lacks the model's columns \\['tier'\\]"):
            enc.matrix(later)
    with pytest.raises(ValueError, match="lacks the model's columns \\['tier'\\]"):
        FrameArrays.of(pd.DataFrame({"n": [2.0]}), ["n", "tier"])


def test_encoder_turns_dates_into_days_not_categories():
    dates = pd.to_datetime(["2020-01-01", "2020-01-11", None])
    enc = FrameEncoder().fit(pd.DataFrame({"signup": dates}))
    assert enc.categories_ == {}
    later = pd.DataFrame({"signup": pd.to_datetime(["2021-01-01", None]).tz_localize("UTC")})
    days = enc.transform(later)["signup"].to_numpy()
    assert days[0] == (pd.Timestamp("2021-01-01") - pd.Timestamp(0)).days  # 18628
    assert np.isnan(days[1])
