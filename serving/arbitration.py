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

from features.errors import UserError
from features.ingest.contract import ACTION_ID, CHANNEL
from serving.catalogue import Catalogue
from training.bundle import ModelBundle
from training.encoding import FrameArrays

# Customers whose (customer, action) pairs are scored together: bounds the pairs' memory (at 9
# actions, about 0.3 GB per model input) while a million customers take 40 chunks.
CUSTOMERS_PER_CHUNK = 25_000


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

    def chosen(self, j: np.ndarray, acted: np.ndarray) -> dict[str, np.ndarray]:
        """The components of each customer's chosen action `j` (its column), as a decision
        table records them: NaN (score and cost 0) where the customer gets nothing."""
        rows = np.arange(len(j))

        def at(matrix: np.ndarray) -> np.ndarray:
            return np.where(acted, matrix[rows, j], np.nan)

        return {
            "score": np.where(acted, self.score[rows, j], 0.0),
            "p_response": at(self.p_response),
            "p_purchase_treated": at(self.p_treated),
            "p_purchase_control": at(self.p_control),
            "uplift": at(self.uplift),
            "value": at(self.value),
            "margin": np.where(acted, self.margin[j], np.nan),
            "cost": np.where(acted, self.cost[j], 0.0),
            "lever": np.where(acted, self.lever[j], np.nan),
        }


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


def customer_arrays(
    features: pd.DataFrame | FrameArrays, rows: slice, columns: list[str]
) -> FrameArrays:
    """The model columns of customers `rows` as arrays: read from a frame (a batch chunk), or
    the arrays themselves (a real-time request's row, already arrays)."""
    if isinstance(features, pd.DataFrame):
        return FrameArrays.of(features.iloc[rows], columns)
    start, stop, _ = rows.indices(len(features))
    if start == 0 and stop == len(features):
        return features
    return features.take(np.arange(start, stop))


def score_actions(
    bundle: ModelBundle,
    features: pd.DataFrame | FrameArrays,
    catalogue: Catalogue,
    allowed: np.ndarray,
    scoring: str,
) -> ScoredActions:
    """Predict and score only the eligible (customer, action) pairs."""
    n, k = allowed.shape
    if scoring == "uplift" and bundle.uplift is None:
        hint = "; set policy.scoring: response" if bundle.response is not None else ""
        raise UserError(
            f"policy.scoring `uplift` needs an uplift model; the bundle skipped it: "
            f"{bundle.skipped.get('uplift', 'unknown reason')}{hint}"
        )
    if scoring == "response" and bundle.response is None:
        raise UserError(
            f"policy.scoring `response` needs a response model; the bundle skipped it: "
            f"{bundle.skipped.get('response', 'unknown reason')}"
        )
    needs_model_value = any(a.value is None for a in catalogue.actions)
    if needs_model_value and bundle.value is None:
        raise UserError(
            "the catalogue has actions without a fixed `value` and the bundle has no value model "
            f"({bundle.skipped.get('value', 'unknown reason')})"
        )
    nan = np.full((n, k), np.nan)
    p_resp, p1, p0, value = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    ids = np.array(catalogue.ids, dtype=object)
    channels = np.array([a.channel for a in catalogue.actions], dtype=object)
    fixed = np.array([np.nan if a.value is None else a.value for a in catalogue.actions])
    # Every eligible (customer, action) pair of a chunk of customers is one row of one
    # prediction per model: one customer's decision is one call per model, not one per action.
    for start in range(0, n, CUSTOMERS_PER_CHUNK):
        chunk = slice(start, start + CUSTOMERS_PER_CHUNK)
        rows, cols = np.nonzero(allowed[chunk])
        if len(rows) == 0:
            continue
        customers = customer_arrays(features, chunk, bundle.customer_features)
        pairs = customers.take(rows).with_columns({CHANNEL: channels[cols], ACTION_ID: ids[cols]})
        at = (rows + start, cols)
        p_resp[at] = bundle.response_probability(pairs)
        if bundle.uplift is not None:
            p1[at], p0[at] = bundle.uplift.predict_outcomes(pairs)
        values = fixed[cols]
        if needs_model_value:
            values = np.where(np.isnan(values), bundle.value.predict(customers)[rows], values)
        value[at] = values

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
