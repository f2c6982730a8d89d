"""Issue #27, item 5: calibration that follows a drifting base rate (`follow_drift`)."""

import numpy as np
import pandas as pd

from training.metrics import classification_metrics
from training.models import CalibratedClassifier, LGBMParams


def _drifting(n: int = 9000, seed: int = 0):
    """Two features and a base rate whose log-odds rise by 1.6 over 300 days."""
    rng = np.random.default_rng(seed)
    days = np.sort(rng.uniform(0, 300, n))
    X = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    logit = -1.5 + X["x1"] + 0.5 * X["x2"] + 1.6 * days / 300
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    t = pd.Series(pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(days, unit="D"))
    return X, y, t, days


def test_following_the_drift_brings_the_test_window_closer_to_its_base_rate():
    X, y, t, days = _drifting()
    tr, ca, te = days < 180, (days >= 180) & (days < 240), days >= 240
    plain = CalibratedClassifier(LGBMParams()).fit(X[tr], y[tr], X[ca], y[ca])
    before = classification_metrics(y[te], plain.predict_proba(X[te]))
    plain.follow_drift(t[tr], y[tr], t[ca], y[ca])
    after = classification_metrics(y[te], plain.predict_proba(X[te]))
    # the trend is found (the labels' marginal trend is a little flatter than the true 0.0053)
    assert 0.003 < plain.drift_per_day_ < 0.008
    assert plain.drift_shift_ > 0
    assert abs(after["auc"] - before["auc"]) < 1e-9  # a monotone shift: the ranking stays
    base = y[te].mean()
    assert abs(after["mean_prediction"] - base) < abs(before["mean_prediction"] - base) / 2
    assert after["ece"] < before["ece"]


def test_without_drift_the_shift_is_small():
    X, y, t, days = _drifting(seed=1)
    rng = np.random.default_rng(2)
    y = (rng.random(len(y)) < 1 / (1 + np.exp(-(-1.0 + X["x1"])))).astype(int)
    tr, ca = days < 180, (days >= 180) & (days < 240)
    model = CalibratedClassifier(LGBMParams()).fit(X[tr], y[tr], X[ca], y[ca])
    model.follow_drift(t[tr], y[tr], t[ca], y[ca])
    assert abs(model.drift_shift_) < 0.1
