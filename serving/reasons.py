"""Reasons in plain words: the features that moved the deciding model most, read as sentences.

The contributions are LightGBM's `pred_contrib` (SHAP values on the raw score) of the model that
decided: the uplift model under uplift scoring when it can explain itself, else the response
model of the action's channel. The top reasons are the largest absolute contributions; each says
whether it pushed the estimate up (+) or down (-).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.config import DataConfig
from features.ingest.contract import ACTION_ID, CHANNEL
from training.bundle import ModelBundle
from training.encoding import FrameArrays, column_values

_DOW = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_CHANNEL_WORDS = {
    "email": "e-mail",
    "sms": "SMS",
    "push": "push",
    "direct_mail": "letter",
    "call_centre": "call-centre",
    "web": "web",
    "app": "app",
    "store": "store",
}
_RESPONSE_WORDS = {
    "click": "clicked",
    "open": "opened",
    "visit": "visited after",
    "call": "called back after",
    "view": "viewed",
}

# feature-name shapes, compiled once: a batch's reasons describe a hundred thousand names
_CHANNEL_DECAYED = re.compile(r"(contact|response|engagement|purchase|spend)_decayed_(\w+)")
_CHANNEL_COUNT = re.compile(r"contact_count_(\d+)d")
_CHANNEL_DAYS_SINCE = re.compile(r"(\w+)_days_since")
_ALL_DECAYED = re.compile(r"all_(purchase|spend)_decayed_(\w+)")
_ALL_COUNT = re.compile(r"all_contact_count_(\d+)d")
_CATEGORY_SHARE = re.compile(r"category_(\w+)_share")
_CATEGORY_DECAYED = re.compile(r"category_(\w+)_decayed_(\w+)")

# sentences for named overall features, by value; and when the value is missing
_NAMED: dict[str, Callable[[float], str]] = {
    "all_purchase_days_since": lambda v: f"last purchase {_n(v)} days ago",
    "all_engagement_days_since": lambda v: f"last engagement {_n(v)} days ago",
    "all_negative_days_since": lambda v: f"last unsubscribe or complaint {_n(v)} days ago",
    "all_purchase_count": lambda v: f"{_n(v)} purchases in all",
    "all_spend_sum": lambda v: f"spent {v:,.0f} in all",
    "monetary_mean": lambda v: f"average order {v:,.0f}",
    "inter_purchase_days": lambda v: f"buys every {_n(v)} days on average",
    "tenure_days": lambda v: f"customer for {_n(v)} days",
    "online_purchase_share": lambda v: f"{v:.0%} of purchases online",
    "preferred_hour": lambda v: f"most active around {int(v):02d}:00",
    "preferred_dow": lambda v: f"most active on {_DOW[int(v) % 7]}s",
}
_NAMED_MISSING = {
    "all_purchase_days_since": "has never bought",
    "all_engagement_days_since": "has never engaged",
    "all_negative_days_since": "has never unsubscribed or complained",
    "inter_purchase_days": "fewer than two purchases",
    "monetary_mean": "no purchases yet",
}


@dataclass(frozen=True)
class Reason:
    feature: str
    value: float | str | None
    contribution: float
    text: str


def _ch(name: str) -> str:
    return _CHANNEL_WORDS.get(name, name.replace("_", " "))


def _n(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 1 or v == 0 else f"{v:.1f}"


class FeatureWords:
    """Turns a feature name and its value into a short sentence about the customer."""

    def __init__(self, data: DataConfig) -> None:
        self.channels = sorted((c.name for c in data.channels), key=len, reverse=True)
        self.response = {c.name: c.response for c in data.channels if c.response}
        self._splits: dict[str, tuple[str | None, str]] = {}

    def _split(self, name: str) -> tuple[str | None, str]:
        """(channel, the rest) of a channel's feature name, else (None, name); kept per name."""
        if name not in self._splits:
            channel = next((c for c in self.channels if name.startswith(c + "_")), None)
            self._splits[name] = (channel, name[len(channel) + 1 :] if channel else name)
        return self._splits[name]

    def describe(self, name: str, value) -> str:
        if isinstance(value, float) and np.isnan(value):
            value = None
        if name.startswith("profile_"):
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # profile integers are stored as floats: "age: 34"
            shown = "unknown" if value is None else value
            return f"{name.removeprefix('profile_').replace('_', ' ')}: {shown}"
        channel, rest = self._split(name)
        if channel is not None and value is not None:
            text = self._channel_phrase(channel, rest, float(value))
            if text:
                return text
        if channel is not None and value is None and rest.endswith("_days_since"):
            what = rest.removesuffix("_days_since").replace("_", " ")
            return f"no {_ch(channel)} {what} on record"
        return self._overall_phrase(name, value)

    def _channel_phrase(self, ch: str, rest: str, v: float) -> str | None:
        c = _ch(ch)
        if m := _CHANNEL_DECAYED.fullmatch(rest):
            what, tag = m.groups()
            span = f"(weighted, {tag} half-life)"
            if what == "contact":
                return f"about {_n(v)} {c} contacts received recently {span}"
            if what == "response":
                verb = _RESPONSE_WORDS.get(self.response.get(ch, ""), "responded to")
                return f"{verb} about {_n(v)} {c} contacts recently {span}"
            if what == "engagement":
                return f"about {_n(v)} {c} engagements recently {span}"
            if what == "purchase":
                return f"about {_n(v)} purchases on {c} recently {span}"
            return f"spent about {v:,.0f} on {c} recently {span}"
        if m := _CHANNEL_COUNT.fullmatch(rest):
            return f"{_n(v)} {c} contacts in the last {m.group(1)} days"
        if m := _CHANNEL_DAYS_SINCE.fullmatch(rest):
            return f"last {c} {m.group(1).replace('_', ' ')} {_n(v)} days ago"
        if rest == "response_rate":
            return f"responds to {v:.0%} of {c} contacts (smoothed)"
        if rest == "consent":
            return f"{'has' if v > 0.5 else 'has not'} given {c} consent"
        return None

    def _overall_phrase(self, name: str, v) -> str:
        if v is None:
            return _NAMED_MISSING.get(name, f"{name.replace('_', ' ')}: unknown")
        v = float(v)
        if m := _ALL_DECAYED.fullmatch(name):
            what, tag = m.groups()
            if what == "purchase":
                return f"about {_n(v)} purchases recently (weighted, {tag} half-life)"
            return f"spent about {v:,.0f} recently (weighted, {tag} half-life)"
        if m := _ALL_COUNT.fullmatch(name):
            return f"{_n(v)} contacts on all channels in the last {m.group(1)} days"
        if m := _CATEGORY_SHARE.fullmatch(name):
            return f"{v:.0%} of purchases and views in {m.group(1)}"
        if m := _CATEGORY_DECAYED.fullmatch(name):
            return f"about {_n(v)} recent purchases or views in {m.group(1)}"
        if name in _NAMED:
            return _NAMED[name](v)
        if name.startswith("offline_purchase_decayed_"):
            return f"about {_n(v)} store purchases recently"
        return f"{name.replace('_', ' ')}: {_n(v)}"


def deciding_model(bundle: ModelBundle, scoring: str, channel: str) -> tuple[Any, str]:
    """The model behind the score of an action on `channel`, and which kind it is."""
    if scoring == "uplift" and hasattr(bundle.uplift, "contribution_matrix"):
        return bundle.uplift, "uplift"
    model = bundle.response_model_for(channel)
    if model is None:
        raise ValueError(f"no model can explain decisions on {channel}")
    return model, "response"


def deciding_contributions(
    bundle: ModelBundle, scoring: str, frame: pd.DataFrame | FrameArrays, channel: str
) -> tuple[pd.DataFrame, str]:
    """Contributions of the model behind the score, for rows of one action; and which model."""
    model, which = deciding_model(bundle, scoring, channel)
    return model.contributions(frame), which


def top_reasons(
    values: np.ndarray,
    names: list[str],
    inputs: pd.DataFrame | FrameArrays,
    words: FeatureWords,
    k: int,
) -> list[list[Reason]]:
    """The k largest |contributions| of each row (`values`: a column per feature of `names`),
    as sentences.

    Neither the bias nor the action's own channel and id are reasons: they are the same for every
    customer offered the action and say nothing about the customer.
    """
    keep = np.flatnonzero(~np.isin(names, ["bias", CHANNEL, ACTION_ID]))
    values, names = values[:, keep], np.asarray(names, dtype=object)[keep]
    k = min(k, values.shape[1])
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
    present = set(inputs.columns)
    columns = {  # only the columns some row's reasons name
        names[j]: column_values(inputs, names[j]).astype(object)
        for j in np.unique(order)
        if names[j] in present
    }
    out: list[list[Reason]] = []
    for i in range(len(values)):
        row = []
        for j in order[i]:
            name = names[j]
            raw = columns[name][i] if name in columns else None
            c = float(values[i, j])
            text = words.describe(name, raw)
            row.append(Reason(name, _plain(raw), c, f"{text} ({'+' if c > 0 else '-'})"))
        out.append(row)
    return out


def explain(
    bundle: ModelBundle,
    scoring: str,
    features: pd.DataFrame | FrameArrays,
    channels: np.ndarray | str,
    action_ids: np.ndarray | str,
    words: FeatureWords,
    k: int,
) -> tuple[list[list[Reason]], np.ndarray]:
    """Top-k reasons for giving row i of `features` (a frame or arrays) the action
    `action_ids[i]` on `channels[i]` (or one action for all), and the model behind each: one
    SHAP call per deciding model, however many actions."""
    pairs = (
        FrameArrays.of(features, bundle.customer_features)
        if isinstance(features, pd.DataFrame)
        else features
    )
    n = len(pairs)
    pairs = pairs.with_columns({CHANNEL: channels, ACTION_ID: action_ids})
    on = np.broadcast_to(np.asarray(channels, dtype=object), (n,))
    groups: dict[int, tuple[Any, str, list[np.ndarray]]] = {}
    for channel in pd.unique(on):
        model, which = deciding_model(bundle, scoring, str(channel))
        groups.setdefault(id(model), (model, which, []))[2].append(np.flatnonzero(on == channel))
    found: list[list[Reason]] = [[] for _ in range(n)]
    models = np.empty(n, dtype=object)
    for model, which, parts in groups.values():
        rows = np.sort(np.concatenate(parts))  # the rows' own order: all rows take no copy
        subset = pairs if len(rows) == n else pairs.take(rows)
        values = model.contribution_matrix(subset)[:, :-1]  # the bias is no reason
        reasons = top_reasons(values, model.feature_names, subset, words, k)
        for r, row_reasons in zip(rows, reasons, strict=True):
            found[r] = row_reasons
        models[rows] = which
    return found, models


def _plain(v):
    if v is None:
        return None
    if isinstance(v, (np.floating, float)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v if isinstance(v, str) else str(v)
