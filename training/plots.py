"""Figures a data scientist opens in MLflow: gain and lift, calibration, Qini, feature importance."""

from __future__ import annotations

# Figures are built without pyplot: no display needed, and nothing keeps them alive once logged.
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from training.metrics import calibration_curve_by_quantile, cumulative_gain, qini_curve


def _thin(x: np.ndarray, y: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    idx = np.unique(np.linspace(0, len(x) - 1, min(points, len(x))).astype(int))
    return x[idx], y[idx]


def gain_figure(y: np.ndarray, scores: dict[str, np.ndarray], title: str) -> Figure:
    """Cumulative gain of each scorer (model, heuristic, oracle) against random targeting."""
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, s in scores.items():
        ax.plot(*_thin(*cumulative_gain(y, s)), label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="random")
    ax.set(xlabel="fraction targeted", ylabel="fraction of positives captured", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def calibration_figure(y: np.ndarray, probs: dict[str, np.ndarray], title: str) -> Figure:
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    top = 0.0
    for name, p in probs.items():
        mean_p, rate = calibration_curve_by_quantile(y, p)
        ax.plot(mean_p, rate, "o-", ms=3, label=name)
        top = max(top, float(np.max(mean_p)), float(np.max(rate)))
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def qini_figure(
    y: np.ndarray, treated: np.ndarray, scores: dict[str, np.ndarray], title: str
) -> Figure:
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    last = 0.0
    for name, s in scores.items():
        frac, q = qini_curve(y, treated, s)
        ax.plot(*_thin(frac, q), label=name)
        last = q[-1]
    ax.plot([0, 1], [0, last], "k--", lw=0.8, label="random")
    ax.set(xlabel="fraction targeted", ylabel="incremental positives", title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def importance_figure(importance: pd.Series, title: str, top: int = 25) -> Figure:
    shown = importance.head(top)[::-1]
    fig = Figure(figsize=(6, max(3, 0.22 * len(shown))))
    ax = fig.subplots()
    ax.barh(shown.index, shown.to_numpy())
    ax.set(xlabel="total gain", title=title)
    fig.tight_layout()
    return fig
