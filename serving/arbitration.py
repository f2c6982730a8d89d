"""Arbitration: every eligible action scored by expected incremental profit; do nothing scores 0.

score(i, a) = lever_a x gain(i, a) x value(i, a) x margin_a - cost_a, where gain is the uplift
P(buy | contacted with a) - P(buy | not contacted) (scoring `uplift`) or P(response to a) (scoring
`response`, the classic ranking kept for comparison), and value is the action's fixed value or the
value model's expected order value. Pega's P x C x V x L is the reference point: P the
probability, V the value, L the lever; C, the context weight, is the eligibility mask here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import ACTION_ID, CHANNEL
from serving.catalogue import Catalogue
from training.bundle import ModelBundle


@dataclass
class ScoredActions:
    """Components per customer x action; NaN where the action is not eligible."""

    action_ids: list[str]
    channels: list[str]
    p_response: np.ndarray
    p_treated: np.ndarray
    p_control: np.ndarray
    value: np.ndarray
    margin: np.ndarray
    cost: np.ndarray
    lever: np.ndarray
    score: np.ndarray  # -inf where not eligible

    @property
    def uplift(self) -> np.ndarray:
        return self.p_treated - self.p_control


def candidate_frame(
    features: pd.DataFrame, columns: list[str], channel: str, action_id: str
) -> pd.DataFrame:
    """The model input for one action: the customers' features plus the action's channel and id
    (copy-on-write: the caller's frame is not changed, and the features are not copied)."""
    frame = features[columns]
    frame[CHANNEL] = channel
    frame[ACTION_ID] = action_id
    return frame


def expected_order_value(bundle: ModelBundle, features: pd.DataFrame) -> np.ndarray:
    """The value model's expected order value per customer (NaN without a value model)."""
    if bundle.value is None:
        return np.full(len(features), np.nan)
    return bundle.value.predict(features[bundle.customer_features])


def score_actions(
    bundle: ModelBundle,
    features: pd.DataFrame,
    catalogue: Catalogue,
    allowed: np.ndarray,
    scoring: str,
) -> ScoredActions:
    """Predict and score only the eligible (customer, action) pairs, one action at a time."""
    n, k = allowed.shape
    if scoring == "uplift" and bundle.uplift is None:
        raise ValueError(
            f"scoring `uplift` needs an uplift model; the bundle skipped it: "
            f"{bundle.skipped.get('uplift', 'unknown reason')}"
        )
    if scoring == "response" and bundle.response is None:
        raise ValueError(
            f"scoring `response` needs a response model; the bundle skipped it: "
            f"{bundle.skipped.get('response', 'unknown reason')}"
        )
    needs_model_value = any(a.value is None for a in catalogue.actions)
    if needs_model_value and bundle.value is None:
        raise ValueError(
            "the catalogue has actions without a fixed `value` and the bundle has no value model "
            f"({bundle.skipped.get('value', 'unknown reason')})"
        )
    order_value = expected_order_value(bundle, features) if needs_model_value else None

    nan = np.full((n, k), np.nan)
    p_resp, p1, p0, value = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    customers = features[bundle.customer_features]  # the rows each action takes, not all columns
    for j, action in enumerate(catalogue.actions):
        rows = np.flatnonzero(allowed[:, j])
        if len(rows) == 0:
            continue
        frame = candidate_frame(
            customers.iloc[rows], bundle.customer_features, action.channel, action.id
        )
        response_model = bundle.response_model_for(action.channel)
        if response_model is not None:
            p_resp[rows, j] = response_model.predict_proba(frame)
        if bundle.uplift is not None:
            treated, control = bundle.uplift.predict_outcomes(frame)
            p1[rows, j], p0[rows, j] = treated, control
        value[rows, j] = action.value if action.value is not None else order_value[rows]

    margin = np.array([a.margin for a in catalogue.actions])
    cost = np.array([a.cost for a in catalogue.actions])
    lever = np.array([a.lever for a in catalogue.actions])
    gain = (p1 - p0) if scoring == "uplift" else p_resp
    score = lever * gain * value * margin - cost
    score = np.where(allowed & np.isfinite(score), score, -np.inf)
    return ScoredActions(
        action_ids=catalogue.ids,
        channels=[a.channel for a in catalogue.actions],
        p_response=p_resp,
        p_treated=p1,
        p_control=p0,
        value=value,
        margin=margin,
        cost=cost,
        lever=lever,
        score=score,
    )
