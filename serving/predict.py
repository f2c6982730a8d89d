"""Every customer's scores as of a time, for batch use without deciding anything (`nba predict`).

Per customer: the probability of a purchase within the bundle's purchase horizon, the expected
spend if they buy and the expected value (their product), P(response) to a contact on each
outbound channel, the uplift of each action, and BG/NBD's expected purchases over the horizon
and P(alive), where the bundle has the model for it; with `days`, BG/NBD's P(purchase) and
expected purchases over any longer horizon (nine months from 90-day labels). The
scores are the bundle's own models on the point-in-time features, the same numbers a decision
reads; no catalogue rule, consent or cap is applied (that is `nba decide`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from features.config import DataConfig
from features.ingest.contract import CUSTOMER_ID
from features.store.batch import AS_OF
from serving.catalogue import Catalogue
from training.bundle import ACTION_FEATURE, CHANNEL_FEATURE, ModelBundle

CHUNK_ROWS = 50_000  # customers scored at a time (a progress step)


def uplift_actions(
    bundle: ModelBundle, catalogue: Catalogue | None, data: DataConfig
) -> list[tuple[str, str]]:
    """(action, channel) pairs to give an uplift for: the catalogue's actions on outbound
    channels that the uplift model saw in training; none without an uplift model."""
    if bundle.uplift is None or catalogue is None:
        return []
    encoder = getattr(bundle.uplift, "encoder_", None)
    seen = set((getattr(encoder, "categories_", {}) or {}).get(ACTION_FEATURE, []))
    outbound = set(data.outbound_channels)
    return [
        (a.id, a.channel)
        for a in catalogue.actions
        if a.channel in outbound and (not seen or a.id in seen)
    ]


def probe_actions(catalogue: Catalogue | None, channels: list[str]) -> list[str | None]:
    """The action a channel's responsiveness is asked for: its first catalogue action (as the
    360 view does), None when the catalogue has none on it."""
    first: dict[str, str] = {}
    for a in catalogue.actions if catalogue is not None else []:
        first.setdefault(a.channel, a.id)
    return [first.get(c) for c in channels]


def predict_chunk(
    bundle: ModelBundle,
    features: pd.DataFrame,
    channels: list[str],
    actions: list[tuple[str, str]],
    catalogue: Catalogue | None = None,
    days: float | None = None,
) -> pd.DataFrame:
    """The scores of one chunk of customers (rows of `features`: customer_id, as_of, features);
    `days`: BG/NBD's P(purchase) and expected purchases over that many days too."""
    out: dict[str, object] = {
        CUSTOMER_ID: features[CUSTOMER_ID].to_numpy(),
        AS_OF: features[AS_OF].to_numpy() if AS_OF in features else pd.NaT,
    }
    n = len(features)
    nan = np.full(n, np.nan)
    p = bundle.purchase.predict_proba(features) if bundle.purchase is not None else nan
    spend = bundle.value.predict(features) if bundle.value is not None else nan
    out["p_purchase"] = p
    out["spend_if_purchase"] = spend
    out["expected_value"] = p * spend
    base = getattr(bundle.purchase, "base", None)  # BG/NBD, where the purchase model reads it
    if base is not None:
        out["expected_purchases"] = base.expected_purchases(features)
        out["p_alive"] = base.p_alive(features)
        if days is not None:  # any horizon, however long the labels were
            out[f"bgnbd_p_purchase_{days:g}d"] = base.p_purchase_within(features, days)
            out[f"bgnbd_expected_purchases_{days:g}d"] = base.expected_purchases(features, days)
    if bundle.response is not None:
        for channel, action in zip(channels, probe_actions(catalogue, channels), strict=True):
            probe = features.assign(**{CHANNEL_FEATURE: channel, ACTION_FEATURE: action})
            out[f"p_response_{channel}"] = bundle.response_probability(probe)
    for action, channel in actions:
        probe = features.assign(**{CHANNEL_FEATURE: channel, ACTION_FEATURE: action})
        treated, control = bundle.uplift.predict_outcomes(probe)
        out[f"uplift_{action}"] = treated - control
    return pd.DataFrame(out)


def predict_customers(
    bundle: ModelBundle,
    features: pd.DataFrame,
    data: DataConfig,
    catalogue: Catalogue | None = None,
    step: Callable[[int], None] | None = None,
    days: float | None = None,
) -> pd.DataFrame:
    """Scores of every row of `features`, CHUNK_ROWS customers at a time; `step(rows)` after
    each chunk (a progress bar); `days` as in `predict_chunk`."""
    channels = data.outbound_channels if bundle.response is not None else []
    actions = uplift_actions(bundle, catalogue, data)
    parts = []
    for start in range(0, len(features), CHUNK_ROWS):
        chunk = features.iloc[start : start + CHUNK_ROWS]
        parts.append(predict_chunk(bundle, chunk, channels, actions, catalogue, days))
        if step is not None:
            step(len(chunk))
    if not parts:
        return predict_chunk(bundle, features, channels, actions, catalogue, days)
    return pd.concat(parts, ignore_index=True)


def write_parquet_atomic(table: pd.DataFrame, target: Path) -> Path:
    """Write `table` to a temporary name beside `target`, then rename it into place: a reader
    never sees a half-written file, and a failed run leaves the previous one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
