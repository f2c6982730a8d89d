"""Evaluation of a bundle on the test window, side by side with a heuristic and the oracle.

Heuristics are the strongest simple rules a marketer already has: for a channel, the customer's
smoothed past response rate on it; for purchase, a recency-frequency score (the 90-day decayed
purchase count), and beside it recency alone and BG/NBD's expected purchases over the horizon
(training/customer_base.py); for value, the customer's past mean order value. Heuristic scores are turned
into probabilities by isotonic calibration on the same calibration slice the models use, so
log loss and calibration compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import mean_absolute_error, r2_score, roc_auc_score, root_mean_squared_error

from features.ingest.contract import CHANNEL, CUSTOMER_ID
from training import plots
from training.bundle import ModelBundle
from training.datasets import PURCHASED, RESPONDED, SPEND, TREATED
from training.metrics import classification_metrics, uplift_metrics
from training.oracle import Truth, contact_oracle, purchase_oracle, uplift_types

RF_SCORE = "all_purchase_decayed_90d"
RECENCY = "all_purchase_days_since"
VALUE_HEURISTIC = "monetary_mean"


@dataclass
class Split:
    train: pd.DataFrame
    calibration: pd.DataFrame
    test: pd.DataFrame

    def describe(self, time_col: str) -> dict[str, str | int]:
        out: dict[str, str | int] = {}
        for name in ("train", "calibration", "test"):
            part = getattr(self, name)
            out[f"{name}_rows"] = len(part)
            if len(part):
                out[f"{name}_from"] = str(part[time_col].min())
                out[f"{name}_to"] = str(part[time_col].max())
        return out


def time_split(frame: pd.DataFrame, time_col: str, cal_frac: float, test_frac: float) -> Split:
    """Earliest rows train, the next slice calibrates, the latest tests; never a random split.

    With few distinct times (monthly snapshots) whole snapshots go to one side each.
    """
    times = np.sort(frame[time_col].unique())
    if len(times) < 3:
        raise ValueError(f"need at least 3 distinct {time_col} values for a time split")
    if len(times) <= 24:
        n_test = max(1, int(round(test_frac * len(times))))
        n_cal = max(1, int(round(cal_frac * len(times))))
        t_cal, t_test = times[-(n_test + n_cal)], times[-n_test]
    else:
        t_cal = np.quantile(frame[time_col].to_numpy(), 1 - cal_frac - test_frac, method="lower")
        t_test = np.quantile(frame[time_col].to_numpy(), 1 - test_frac, method="lower")
    t = frame[time_col]
    return Split(
        train=frame[t < t_cal].reset_index(drop=True),
        calibration=frame[(t >= t_cal) & (t < t_test)].reset_index(drop=True),
        test=frame[t >= t_test].reset_index(drop=True),
    )


def _calibrated_heuristic(cal_score, cal_y, test_score) -> np.ndarray:
    iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6)
    iso.fit(np.nan_to_num(cal_score, nan=-1.0), np.asarray(cal_y, dtype=float))
    return iso.predict(np.nan_to_num(test_score, nan=-1.0))


def channel_response_rate(frame: pd.DataFrame) -> np.ndarray:
    """Each row's smoothed past response rate on the row's own channel (the heuristic)."""
    out = np.full(len(frame), np.nan)
    for channel in frame[CHANNEL].unique():
        col = f"{channel}_response_rate"
        if col in frame.columns:
            rows = (frame[CHANNEL] == channel).to_numpy()
            out[rows] = frame.loc[rows, col].to_numpy()
    return out


@dataclass
class FamilyReport:
    """Metrics of one model family on the test window, by scorer (model, heuristic, oracle)."""

    family: str
    metrics: dict[str, dict[str, float]]
    figures: dict[str, Figure] = field(default_factory=dict)
    per_channel: dict[str, dict[str, float]] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """MLflow metric names: `test_auc`, `heuristic_test_auc`, `oracle_test_auc`, ratios."""
        out = {}
        for scorer, values in self.metrics.items():
            prefix = "" if scorer == "model" else f"{scorer}_"
            for k, v in values.items():
                if v == v:  # drop NaN
                    out[f"{prefix}test_{k}"] = float(v)
        for channel, values in self.per_channel.items():
            for k, v in values.items():
                if v == v:
                    out[f"test_{k}_{channel}"] = float(v)
        return out


def evaluate_response(
    bundle: ModelBundle, split: Split, truth: Truth | None, with_figures: bool = True
) -> FamilyReport | None:
    if bundle.response is None:
        return None
    cal = split.calibration[split.calibration[TREATED]]
    test = split.test[split.test[TREATED]].reset_index(drop=True)
    y = test[RESPONDED].to_numpy(dtype=int)
    p_model = bundle.predict(test)["p_response"].to_numpy()
    p_heur = _calibrated_heuristic(
        channel_response_rate(cal), cal[RESPONDED], channel_response_rate(test)
    )
    scorers = {"model": p_model, "heuristic": p_heur}
    if truth is not None:
        scorers["oracle"] = contact_oracle(truth, test["event_id"])["p_response"].to_numpy()
    metrics = {k: classification_metrics(y, v) for k, v in scorers.items()}
    per_channel = {}
    for channel in sorted(test[CHANNEL].unique()):
        rows = (test[CHANNEL] == channel).to_numpy()
        for name, values in scorers.items():
            m = classification_metrics(y[rows], values[rows])
            tag = "" if name == "model" else f"{name}_"
            per_channel.setdefault(channel, {})[f"{tag}auc"] = m["auc"]
        per_channel[channel]["base_rate"] = float(y[rows].mean())
    _add_oracle_ratio(metrics)
    figures = {}
    if with_figures:
        figures = {
            "response_gain.png": plots.gain_figure(y, scorers, "response: cumulative gain"),
            "response_calibration.png": plots.calibration_figure(
                y, scorers, "response: calibration"
            ),
        }
    return FamilyReport("response", metrics, figures, per_channel)


def evaluate_uplift(
    bundle: ModelBundle, split: Split, truth: Truth | None, with_figures: bool = True
) -> FamilyReport | None:
    if bundle.uplift is None:
        return None
    test = split.test
    y = test[PURCHASED].to_numpy(dtype=int)
    t = test[TREATED].to_numpy(dtype=bool)
    pred = bundle.predict(test)
    scorers = {"model": (pred["p_purchase_treated"] - pred["p_purchase_control"]).to_numpy()}
    if bundle.response is not None:
        scorers["response_model"] = pred["p_response"].to_numpy()
    scorers["heuristic"] = np.nan_to_num(channel_response_rate(test), nan=0.0)
    if truth is not None:
        scorers["oracle"] = contact_oracle(truth, test["event_id"])["uplift"].to_numpy()
    metrics = {k: uplift_metrics(y, t, v) for k, v in scorers.items()}
    if truth is not None:
        # every scorer beside the truth: how it ranks the true effect, and each type's mean
        true_uplift = scorers["oracle"]
        types = uplift_types(truth, test[CUSTOMER_ID])
        for name, score in scorers.items():
            metrics[name]["corr_with_true_uplift"] = float(
                pd.Series(score).corr(pd.Series(true_uplift), method="spearman")
            )
            if types is not None:
                metrics[name].update(_uplift_by_type(types, score))
        metrics["model"]["mean_predicted_uplift"] = float(np.mean(scorers["model"]))
        metrics["oracle"]["mean_true_uplift"] = float(np.nanmean(true_uplift))
    figures = {}
    if with_figures:
        figures["uplift_qini.png"] = plots.qini_figure(
            y, t, scorers, "uplift: Qini curve (purchase)"
        )
    return FamilyReport("uplift", metrics, figures)


def _uplift_by_type(types: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """A score's mean over each true uplift type (for the model its predicted uplift, for the
    oracle the true one), and how it ranks persuadables above sleeping dogs (an AUC: 0.5 is no
    better than chance)."""
    frame = pd.DataFrame({"type": types, "score": score}).dropna()
    out = {
        f"mean_uplift_{kind}": float(v) for kind, v in frame.groupby("type")["score"].mean().items()
    }
    pair = frame[frame["type"].isin(["persuadable", "sleeping_dog"])]
    if pair["type"].nunique() == 2:
        out["auc_persuadable_over_sleeping_dog"] = float(
            roc_auc_score(pair["type"] == "persuadable", pair["score"])
        )
    return out


def evaluate_purchase(
    bundle: ModelBundle,
    split: Split,
    truth: Truth | None,
    horizon_days: float,
    with_figures: bool = True,
) -> FamilyReport | None:
    if bundle.purchase is None:
        return None
    test = split.test
    y = test[PURCHASED].to_numpy(dtype=int)
    p_model = bundle.purchase.predict_proba(test)
    cal = split.calibration
    p_heur = _calibrated_heuristic(cal[RF_SCORE], cal[PURCHASED], test[RF_SCORE])
    scorers = {"model": p_model, "heuristic": p_heur}
    # recency alone (fewer days since the last purchase ranks higher; never bought is last)
    recency_cal, recency_test = (-f[RECENCY].fillna(1e9) for f in (cal, test))
    scorers["recency"] = _calibrated_heuristic(recency_cal, cal[PURCHASED], recency_test)
    base = getattr(bundle.purchase, "base", None)
    if base is not None:  # BG/NBD's expected purchases over the horizon, calibrated likewise
        scorers["bgnbd"] = _calibrated_heuristic(
            base.expected_purchases(cal), cal[PURCHASED], base.expected_purchases(test)
        )
    if truth is not None:
        oracle = np.full(len(test), np.nan)
        for as_of in test["as_of"].unique():
            rows = (test["as_of"] == as_of).to_numpy()
            oracle[rows] = purchase_oracle(
                truth, test.loc[rows, CUSTOMER_ID], pd.Timestamp(as_of), horizon_days
            )
        scorers["oracle"] = oracle
        # every scorer on the same rows: the known customers the oracle can speak for
        known = ~np.isnan(oracle)
        y = y[known]
        scorers = {k: v[known] for k, v in scorers.items()}
    metrics = {k: classification_metrics(y, v) for k, v in scorers.items()}
    _add_oracle_ratio(metrics)
    figures = {}
    if with_figures:
        figures = {
            "purchase_gain.png": plots.gain_figure(y, scorers, "purchase: cumulative gain"),
            "purchase_calibration.png": plots.calibration_figure(
                y, {k: np.nan_to_num(v) for k, v in scorers.items()}, "purchase: calibration"
            ),
        }
    return FamilyReport("purchase", metrics, figures)


def evaluate_value(bundle: ModelBundle, split: Split) -> FamilyReport | None:
    if bundle.value is None:
        return None
    test = split.test[split.test[PURCHASED]]
    if test.empty:
        return None
    y = test[SPEND].to_numpy(dtype=float)
    fallback = float(split.train.loc[split.train[PURCHASED], SPEND].mean())
    scorers = {
        "model": bundle.value.predict(test),
        "heuristic": test[VALUE_HEURISTIC].fillna(fallback).to_numpy(dtype=float),
    }
    metrics = {
        k: {
            "mae": float(mean_absolute_error(y, v)),
            "rmse": float(root_mean_squared_error(y, v)),
            "r2": float(r2_score(y, v)),
            "rows": float(len(y)),
        }
        for k, v in scorers.items()
    }
    return FamilyReport("value", metrics)


def _add_oracle_ratio(metrics: dict[str, dict[str, float]]) -> None:
    if "oracle" in metrics:
        oracle_auc = metrics["oracle"]["auc"]
        for name in metrics.keys() - {"oracle"}:
            metrics[name]["auc_vs_oracle"] = metrics[name]["auc"] / oracle_auc


# per family: the metric that says which scorer is better, and whether higher is better
HEAD_TO_HEAD = {"response": ("auc", True), "purchase": ("auc", True), "value": ("mae", False)}


def losses_to_heuristic(reports: dict[str, FamilyReport]) -> list[str]:
    """The families whose model does worse than one of its baselines (the heuristic, and for
    purchase recency alone and BG/NBD) on the test window, in words: a model that cannot beat
    a rule of thumb or a textbook model must say so, not pass silently."""
    found = []
    for family, report in reports.items():
        metric, higher = HEAD_TO_HEAD.get(family, (None, True))
        model = report.metrics.get("model", {}).get(metric, float("nan"))
        for name, values in report.metrics.items():
            if name in ("model", "oracle"):
                continue
            rule = values.get(metric, float("nan"))
            if model == model and rule == rule and (model < rule if higher else model > rule):
                what = "its heuristic" if name == "heuristic" else f"the {name} baseline"
                found.append(
                    f"the {family} model is worse than {what} on the test window "
                    f"({metric} {model:.4f} vs {rule:.4f})"
                )
    return found


def gate_score(reports: dict[str, FamilyReport]) -> float:
    """The number the promotion gate compares: mean test AUC of the response and purchase models."""
    aucs = [reports[f].metrics["model"]["auc"] for f in ("response", "purchase") if f in reports]
    return float(np.mean(aucs)) if aucs else float("nan")
