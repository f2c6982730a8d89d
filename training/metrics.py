"""Evaluation metrics: discrimination, calibration, lift and gain, and uplift (Qini).

scikit-learn provides AUC, PR-AUC, log loss and Brier; this module adds what it lacks: expected
calibration error, lift at a top fraction, cumulative gain, the Qini curve and coefficient, and
the area under the uplift curve (AUUC).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 20) -> float:
    """Mean |observed rate - mean prediction| over equal-count bins, weighted by bin size.

    Equal-count (not equal-width) bins: with rare events nearly every prediction falls into the
    lowest equal-width bin, which would hide miscalibration where the decisions are made.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    chunks = np.array_split(order, min(bins, len(p)))
    return float(sum(len(c) * abs(y[c].mean() - p[c].mean()) for c in chunks if len(c)) / len(p))


def calibration_curve_by_quantile(
    y: np.ndarray, p: np.ndarray, bins: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """(mean prediction, observed rate) per equal-count bin, for calibration plots."""
    order = np.argsort(np.asarray(p), kind="stable")
    chunks = [c for c in np.array_split(order, min(bins, len(order))) if len(c)]
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    return np.array([p[c].mean() for c in chunks]), np.array([y[c].mean() for c in chunks])


def lift_at(y: np.ndarray, score: np.ndarray, fraction: float = 0.1) -> float:
    """Positive rate among the top `fraction` by score, over the overall positive rate."""
    y = np.asarray(y, dtype=float)
    k = max(1, int(round(fraction * len(y))))
    top = np.argsort(-np.asarray(score), kind="stable")[:k]
    base = y.mean()
    return float(y[top].mean() / base) if base > 0 else float("nan")


def cumulative_gain(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fraction targeted, fraction of all positives captured) when targeting by score."""
    y = np.asarray(y, dtype=float)[np.argsort(-np.asarray(score), kind="stable")]
    captured = np.cumsum(y) / max(y.sum(), 1e-12)
    return np.arange(1, len(y) + 1) / len(y), captured


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """The headline metrics of a probability model."""
    y = np.asarray(y, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    both = 0 < y.sum() < len(y)
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "lift_top_decile": lift_at(y, p, 0.1),
        "base_rate": float(y.mean()),
        "mean_prediction": float(p.mean()),
        "rows": float(len(y)),
    }


def _cumulative_arms(
    y: np.ndarray, treated: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Targeting by descending score: treated and control counts and positives in the top k."""
    order = np.argsort(-np.asarray(score), kind="stable")
    y = np.asarray(y, dtype=float)[order]
    t = np.asarray(treated, dtype=bool)[order]
    return np.cumsum(t), np.cumsum(~t), np.cumsum(y * t), np.cumsum(y * ~t)


def qini_curve(
    y: np.ndarray, treated: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(fraction targeted, incremental positives) targeting by descending uplift score.

    Q(k) = Y_t(k) - Y_c(k) * N_t(k) / N_c(k): treated positives among the top k minus the
    control positives scaled to the treated group's size (Radcliffe's Qini curve).
    """
    n_t, n_c, y_t, y_c = _cumulative_arms(y, treated, score)
    ratio = np.divide(n_t, n_c, out=np.zeros(len(n_t)), where=n_c > 0)
    return np.arange(1, len(n_t) + 1) / len(n_t), y_t - y_c * ratio


def qini_coefficient(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> float:
    """Area between the Qini curve and the random-targeting line, per treated customer.

    0 is no better than random; comparable across models on the same test set.
    """
    frac, q = qini_curve(y, treated, score)
    random_line = frac * q[-1]
    n_treated = max(int(np.asarray(treated, dtype=bool).sum()), 1)
    return float(np.mean(q - random_line) / n_treated)


def auuc(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> float:
    """Area between the uplift curve and random targeting, per customer.

    The uplift curve at the top k is (treated rate - control rate among the top k) x k / N: the
    incremental outcomes per customer of treating the top k. Unlike the Qini it compares rates,
    so it does not depend on how the treated and control groups are mixed in the top k.
    """
    n_t, n_c, y_t, y_c = _cumulative_arms(y, treated, score)
    rate_t = np.divide(y_t, n_t, out=np.zeros(len(n_t)), where=n_t > 0)
    rate_c = np.divide(y_c, n_c, out=np.zeros(len(n_c)), where=n_c > 0)
    frac = np.arange(1, len(n_t) + 1) / len(n_t)
    curve = (rate_t - rate_c) * frac
    return float(np.mean(curve - frac * curve[-1]))


def uplift_at(y: np.ndarray, treated: np.ndarray, score: np.ndarray, fraction: float) -> float:
    """Treated minus control outcome rate among the top `fraction` by uplift score."""
    k = max(2, int(round(fraction * len(y))))
    top = np.argsort(-np.asarray(score), kind="stable")[:k]
    y = np.asarray(y, dtype=float)[top]
    t = np.asarray(treated, dtype=bool)[top]
    if t.all() or not t.any():
        return float("nan")
    return float(y[t].mean() - y[~t].mean())


def uplift_metrics(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> dict[str, float]:
    return {
        "qini": qini_coefficient(y, treated, score),
        "auuc": auuc(y, treated, score),
        "uplift_at_10pct": uplift_at(y, treated, score, 0.1),
        "uplift_at_30pct": uplift_at(y, treated, score, 0.3),
        "ate": uplift_at(y, treated, score, 1.0),
    }
