"""BG/NBD and Gamma-Gamma on the customer base: the textbook model of who is still buying.

Fitted (through `lifetimes`) on the training snapshots' purchase history, read from features
every snapshot already has: x = repeat purchases (`all_purchase_count` - 1), t_x = days from
the first to the last purchase (`inter_purchase_days` x x), T = days from the first purchase to
the snapshot (`all_purchase_days_since` + t_x). A customer who never bought has x = t_x = 0 and
T = their tenure, so the model's prior speaks for them. It serves twice: as the baseline the
purchase model must beat in `nba evaluate`, and, through its expected purchases over the
horizon and P(alive), as two inputs of the purchase model itself (`WithCustomerBase`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.utils import ConvergenceError

from training.encoding import FrameArrays, column_values
from training.models import CalibratedClassifier

EXPECTED_PURCHASES = "bgnbd_expected_purchases"
P_ALIVE = "bgnbd_p_alive"
COLUMNS = (EXPECTED_PURCHASES, P_ALIVE)
FIT_ROWS = 100_000  # snapshot rows the fit reads at most (a seeded sample beyond)
# lifetimes adds penalizer x sum(params^2) to the *mean* negative log-likelihood, which with
# alpha in the tens shrinks the fit hard: none first, a small one only if that fails to converge
PENALIZERS = (0.0, 0.001)


def repeat_purchase_history(
    X: pd.DataFrame | FrameArrays,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, T) in days per row, from the snapshot's features (see the module docstring)."""
    count = np.nan_to_num(column_values(X, "all_purchase_count").astype(float), nan=0.0)
    since = column_values(X, "all_purchase_days_since").astype(float)
    gap = column_values(X, "inter_purchase_days").astype(float)
    tenure = column_values(X, "tenure_days").astype(float)
    x = np.maximum(count - 1.0, 0.0)
    t_x = np.where(x > 0, np.nan_to_num(gap, nan=0.0) * x, 0.0)
    age = np.where(count > 0, since + t_x, tenure)
    # a first event at the snapshot's own time, or a missing tenure: a customer of age zero
    T = np.maximum(np.nan_to_num(age, nan=0.0), t_x)
    return x, t_x, T


@dataclass(frozen=True)
class CustomerBase:
    """Fitted BG/NBD (r, alpha, a, b) and, where repeat buyers allow, Gamma-Gamma (p, q, v)."""

    bgnbd: dict[str, float]
    horizon_days: float
    gamma_gamma: dict[str, float] | None = None

    @classmethod
    def fit(cls, frame: pd.DataFrame, horizon_days: float, seed: int = 0) -> CustomerBase | None:
        """The model of `frame`'s snapshot rows; None when it cannot be fitted (no repeat
        buyers, or the likelihood does not converge)."""
        if len(frame) > FIT_ROWS:
            frame = frame.sample(FIT_ROWS, random_state=seed)
        x, t_x, T = repeat_purchase_history(frame)
        keep = T > 0
        if (x[keep] > 0).sum() < 20:
            return None
        params = _fitted(BetaGeoFitter, x[keep], t_x[keep], T[keep])
        if params is None:
            return None
        return cls(params, float(horizon_days), _fit_gamma_gamma(frame, x))

    def expected_purchases(
        self, X: pd.DataFrame | FrameArrays, days: float | None = None
    ) -> np.ndarray:
        """E[purchases in the next `days` (default: the horizon) | history], per row."""
        return self._expected(repeat_purchase_history(X), days)

    def p_purchase_within(self, X: pd.DataFrame | FrameArrays, days: float) -> np.ndarray:
        """P(at least one purchase in the next `days`), for any length of time whatever the
        label horizon: P(alive) x (1 - ((alpha + T) / (alpha + T + days))^(r + x)), since an
        active customer's rate given their history is Gamma(r + x, alpha + T) and a drop-out
        only follows a purchase."""
        history = repeat_purchase_history(X)
        x, _, T = history
        r, alpha = self.bgnbd["r"], self.bgnbd["alpha"]
        none_while_alive = ((alpha + T) / (alpha + T + days)) ** (r + x)
        return self._alive(history) * (1.0 - none_while_alive)

    def p_alive(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        """P(the customer has not dropped out) given their purchase history, per row."""
        return self._alive(repeat_purchase_history(X))

    def expected_spend(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        """Gamma-Gamma's expected mean order value per row (the population mean for customers
        without a repeat purchase); NaN without a Gamma-Gamma fit."""
        if self.gamma_gamma is None:
            return np.full(len(X), np.nan)
        x, _, _ = repeat_purchase_history(X)
        mean = np.nan_to_num(column_values(X, "monetary_mean").astype(float), nan=0.0)
        gg = _with_params(GammaGammaFitter, self.gamma_gamma)
        return np.asarray(gg.conditional_expected_average_profit(x, mean), dtype=float)

    def with_columns(self, X: pd.DataFrame | FrameArrays) -> pd.DataFrame | FrameArrays:
        """`X` with the expected purchases over the horizon and P(alive) as two more columns."""
        history = repeat_purchase_history(X)
        values = {EXPECTED_PURCHASES: self._expected(history), P_ALIVE: self._alive(history)}
        if isinstance(X, FrameArrays):
            return X.with_columns(values)
        return X.assign(**values)

    def _expected(self, history: tuple[np.ndarray, ...], days: float | None = None) -> np.ndarray:
        t = self.horizon_days if days is None else days
        bg = _with_params(BetaGeoFitter, self.bgnbd)
        with np.errstate(all="ignore"):
            out = bg.conditional_expected_number_of_purchases_up_to_time(t, *history)
        return np.nan_to_num(np.asarray(out, dtype=float), nan=0.0, posinf=0.0)

    def _alive(self, history: tuple[np.ndarray, ...]) -> np.ndarray:
        with np.errstate(all="ignore"):
            out = _with_params(BetaGeoFitter, self.bgnbd).conditional_probability_alive(*history)
        return np.nan_to_num(np.asarray(out, dtype=float), nan=1.0)


def _with_params(fitter, params: dict[str, float]):
    """A lifetimes fitter carrying fitted parameters only (no training data), to predict with."""
    model = fitter()
    model.params_ = pd.Series(params)
    return model


def _fit_gamma_gamma(frame: pd.DataFrame, x: np.ndarray) -> dict[str, float] | None:
    """Gamma-Gamma on repeat buyers' mean order value; None when it does not fit (it needs
    positive values and q > 1 for a finite population mean)."""
    mean = frame["monetary_mean"].to_numpy(dtype=float)
    rows = (x > 0) & np.isfinite(mean) & (mean > 0)
    if rows.sum() < 20:
        return None
    params = _fitted(GammaGammaFitter, x[rows], mean[rows])
    return params if params is not None and params["q"] > 1 else None


def _fitted(fitter, *columns: np.ndarray) -> dict[str, float] | None:
    """The first finite fit of `fitter` over PENALIZERS; None when none converges."""
    for penalizer in PENALIZERS:
        try:
            params = fitter(penalizer_coef=penalizer).fit(*columns).params_
        except (ConvergenceError, ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue
        out = {k: float(v) for k, v in params.items()}
        if all(np.isfinite(list(out.values()))):
            return out
    return None


class WithCustomerBase:
    """A calibrated purchase classifier that reads BG/NBD's expected purchases and P(alive)
    beside the customer features; same face as `CalibratedClassifier`."""

    def __init__(self, base: CustomerBase, model: CalibratedClassifier) -> None:
        self.base = base
        self.model = model

    def fit(
        self, X: pd.DataFrame, y: np.ndarray, X_cal: pd.DataFrame, y_cal: np.ndarray
    ) -> WithCustomerBase:
        self.model.fit(self.base.with_columns(X), y, self.base.with_columns(X_cal), y_cal)
        return self

    @property
    def feature_names(self) -> list[str]:
        """The input columns: the classifier's own minus the two this wrapper derives."""
        return [c for c in self.model.feature_names if c not in COLUMNS]

    def predict_proba(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        return self.model.predict_proba(self.base.with_columns(X))

    def predict_uncalibrated(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        return self.model.predict_uncalibrated(self.base.with_columns(X))

    def follow_drift(
        self, t: pd.Series, y: np.ndarray, t_cal: pd.Series, y_cal: np.ndarray
    ) -> WithCustomerBase:
        self.model.follow_drift(t, y, t_cal, y_cal)
        return self

    def contribution_matrix(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        return self.model.contribution_matrix(self.base.with_columns(X))

    def contributions(self, X: pd.DataFrame | FrameArrays) -> pd.DataFrame:
        return self.model.contributions(self.base.with_columns(X))

    def feature_importance(self) -> pd.Series:
        return self.model.feature_importance()
