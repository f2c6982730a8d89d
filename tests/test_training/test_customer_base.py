"""BG/NBD and Gamma-Gamma on snapshot features: the fit finds a known process's parameters, its
scores rank next-horizon buyers, and the purchase model that reads them works on frames and on
the serving path's arrays alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from training.customer_base import COLUMNS, CustomerBase, WithCustomerBase
from training.encoding import FrameArrays
from training.models import CalibratedClassifier, LGBMParams

TRUE = {"r": 0.6, "alpha": 15.0, "a": 0.7, "b": 3.0}
AGE, HORIZON = 300.0, 90.0


def _world(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Snapshot features at day AGE of a BG/NBD population born at day 0, and whether each
    customer buys in (AGE, AGE + HORIZON]."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(TRUE["r"], 1 / TRUE["alpha"], n)
    p = rng.beta(TRUE["a"], TRUE["b"], n)
    count, first, last, later = np.ones(n), np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
    for i in range(n):  # the first purchase at 0 is the birth; a drop-out follows a repeat
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > AGE:
                later[i] = t <= AGE + HORIZON
                break
            count[i] += 1
            last[i] = t
            if rng.random() < p[i]:
                break
    spend = rng.gamma(4.0, 10.0, n)
    frame = pd.DataFrame(
        {
            "all_purchase_count": count,
            "all_purchase_days_since": AGE - last,
            "inter_purchase_days": np.where(count > 1, (last - first) / (count - 1), np.nan),
            "tenure_days": np.full(n, AGE),
            "monetary_mean": spend,
        }
    )
    return frame, later


@pytest.fixture(scope="module")
def world():
    return _world(4000, seed=3)


def test_the_fit_finds_the_process_parameters_and_ranks_next_horizon_buyers(world):
    frame, later = world
    base = CustomerBase.fit(frame, HORIZON)
    assert base is not None
    for k, v in TRUE.items():
        assert base.bgnbd[k] == pytest.approx(v, rel=0.35), k
    alive = base.p_alive(frame)
    assert ((alive >= 0) & (alive <= 1)).all()
    assert (alive[frame["all_purchase_count"].to_numpy() == 1] == 1).all()  # no repeat: alive
    expected = base.expected_purchases(frame)
    assert roc_auc_score(later, expected) > 0.7
    # more days ahead, more purchases expected
    assert (base.expected_purchases(frame, days=2 * HORIZON) >= expected - 1e-12).all()
    # P(a purchase within the horizon) is calibrated on the process, and grows with the days
    p_buy = base.p_purchase_within(frame, HORIZON)
    assert p_buy.mean() == pytest.approx(later.mean(), abs=0.03)
    assert roc_auc_score(later, p_buy) > 0.7
    assert (base.p_purchase_within(frame, 3 * HORIZON) >= p_buy).all()
    spend = base.expected_spend(frame)
    assert base.gamma_gamma is not None and np.isfinite(spend).all() and (spend > 0).all()


def test_no_fit_without_repeat_buyers():
    frame = pd.DataFrame(
        {
            "all_purchase_count": np.ones(500),
            "all_purchase_days_since": np.linspace(1, 200, 500),
            "inter_purchase_days": np.nan,
            "tenure_days": 300.0,
            "monetary_mean": 20.0,
        }
    )
    assert CustomerBase.fit(frame, HORIZON) is None


def test_the_purchase_model_reads_the_two_columns_on_frames_and_arrays(world):
    frame, later = world
    base = CustomerBase.fit(frame, HORIZON)
    half = len(frame) // 2
    model = WithCustomerBase(base, CalibratedClassifier(LGBMParams(n_estimators=50))).fit(
        frame.iloc[:half], later[:half], frame.iloc[half:], later[half:]
    )
    assert set(COLUMNS) <= set(model.model.feature_names)
    assert not set(COLUMNS) & set(model.feature_names)  # the inputs a caller must give
    p_frame = model.predict_proba(frame)
    p_arrays = model.predict_proba(FrameArrays.of(frame))
    np.testing.assert_allclose(p_frame, p_arrays)
    assert model.contributions(frame.head(3)).shape == (3, len(model.model.feature_names) + 1)
