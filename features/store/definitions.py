"""Customer feature definitions: the one source both the batch engine and the streaming updater run.

A feature set has two layers:

* **base aggregates**, each a filter on (channel, event type[, hour, weekday, category]) and an
  operation that can be updated in O(1) per event (decayed count or amount, count, sum, last or
  first time) or from a short bounded buffer (counts in a sliding window of a few days);
* **derived features**, pure functions of the base aggregates and the as-of time (rates, days
  since, shares, consent state, preferred hour), computed for all rows in one compiled pass.

The batch engine computes the base aggregates in SQL, the streaming updater in place per event;
both hand them to `FeatureSet.derive`, so the derived layer is shared code, not re-implemented.
Feature names read as sentences: `{channel}_{signal}_{aggregate}_{window}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numba
import numpy as np
import pandas as pd
from pydantic import Field

from features.config import DataConfig, Strict
from features.errors import UserError

US_PER_DAY = 86_400_000_000
Op = Literal["decayed_count", "decayed_amount", "count", "amount", "last", "first", "window_count"]
Dim = Literal["hour", "dow", "category"]


class FeatureConfig(Strict):
    """The `features` section of the configuration file."""

    half_lives_days: list[float] = Field(
        default=[7.0, 30.0, 90.0],
        description="Half-lives of the exponentially decayed counts and amounts.",
    )
    fatigue_windows_days: list[int] = Field(
        default=[7, 30], description="Sliding windows (days) of the exact contact counts."
    )
    rate_half_life_days: float = Field(
        default=90.0, description="Half-life of the counts behind the smoothed response rates."
    )
    rate_prior_strength: float = Field(
        default=10.0,
        gt=0,
        description="Pseudo-contacts of prior: 1 contact and 1 response is not a 100% rate.",
    )
    response_rate_priors: dict[str, float] = Field(
        default={
            "email": 0.02,
            "sms": 0.05,
            "push": 0.05,
            "direct_mail": 0.04,
            "call_centre": 0.25,
        },
        description="Prior response rate per outbound channel (industry figures).",
    )
    default_response_rate_prior: float = Field(default=0.03, gt=0, lt=1)
    contact_event_types: list[str] = Field(
        default=["sent"], description="Event types that are a contact made to the customer."
    )
    engagement_event_types: list[str] = Field(
        default=["open", "click", "visit", "view", "call"],
        description="Event types that show the customer engaging with a channel.",
    )
    revoking_event_types: list[str] = Field(
        default=["consent_revoked", "unsubscribe", "complaint"],
        description="Event types that end consent on their channel.",
    )
    negative_event_types: list[str] = Field(default=["unsubscribe", "complaint"])
    physical_channels: list[str] = Field(
        default=["store"], description="Channels whose purchases count as offline."
    )
    categories: list[str] = Field(
        default=["apparel", "beauty", "electronics", "home", "sports", "grocery"],
        description="Product categories with their own affinity feature.",
    )
    snapshot_partition_events: int = Field(
        default=4_000_000,
        gt=0,
        description=(
            "A DuckDB snapshot scans and reduces the events a customer_id range at a time, ranges "
            "of about this many events: memory is bounded by the ranges in flight (about 100 "
            "bytes an event while it is reduced), and on the sorted event store a range reads "
            "only its own parquet row groups. Each range is a query of its own (1M customers, "
            "77M events: 12.7 s with 4M-event ranges, 14.0 s with 1M)."
        ),
    )
    profile_columns: list[str] | None = Field(
        default=None,
        description="Columns of `customers` used as features; all but the key when omitted.",
    )

    def half_life_tag(self, half_life: float) -> str:
        return f"{half_life:g}d"


@dataclass(frozen=True)
class BaseAggregate:
    """One O(1)-updatable aggregate over a customer's events before the as-of time."""

    name: str
    event_types: tuple[str, ...]
    op: Op
    channels: tuple[str, ...] | None = None  # None: every channel
    param: float | None = None  # half-life (decayed ops) or window length in days (window_count)
    dim: Dim | None = None
    dim_value: int | str | None = None

    @property
    def decay_rate_per_us(self) -> float:
        """lambda in value(t) = sum_i w_i * exp(-lambda * (t - ts_i)), time in microseconds."""
        if self.op not in ("decayed_count", "decayed_amount"):
            return 0.0
        return math.log(2.0) / (float(self.param) * US_PER_DAY)


@dataclass
class FeatureSet:
    """Base aggregates and the derived features computed from them, for one configuration."""

    data: DataConfig
    config: FeatureConfig
    base: list[BaseAggregate] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base = _base_aggregates(self.data, self.config)
        self.base_index = {b.name: i for i, b in enumerate(self.base)}
        if len(self.base_index) != len(self.base):
            raise ValueError("feature definitions: base aggregate names must be unique")
        self._plan = _DerivationPlan(self)
        self.names: list[str] = self._plan.names

    @property
    def base_names(self) -> list[str]:
        return [b.name for b in self.base]

    @property
    def max_window_us(self) -> int:
        windows = [b.param for b in self.base if b.op == "window_count"]
        return int(max(windows, default=0) * US_PER_DAY)

    def derive(
        self, base: np.ndarray, as_of_us: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Derived features (rows x len(names)) from base aggregates (rows x len(base)),
        written into `out` (C-contiguous float64 rows) when given."""
        return self._plan.run(np.asarray(base, dtype=np.float64), np.asarray(as_of_us), out)

    def derive_frame(self, base: pd.DataFrame, as_of_us: np.ndarray) -> pd.DataFrame:
        values = self.derive(base[self.base_names].to_numpy(dtype=np.float64), as_of_us)
        return pd.DataFrame(values, columns=self.names, index=base.index)


def profile_columns(customers: pd.DataFrame, wanted: list[str] | None) -> pd.DataFrame:
    """The customers table's profile columns indexed by customer_id (first row per customer)."""
    from features.ingest.contract import CUSTOMER_ID, CUSTOMER_KEY

    if CUSTOMER_ID not in customers.columns:
        raise ValueError("customers table: expected a customer_id column (run `nba ingest` first)")
    keys = {CUSTOMER_ID, CUSTOMER_KEY}
    columns = wanted if wanted is not None else [c for c in customers.columns if c not in keys]
    missing = [c for c in columns if c not in customers.columns]
    if missing:
        raise UserError(f"features.profile_columns: {missing} not in the customers table")
    table = customers.drop_duplicates(CUSTOMER_ID).set_index(CUSTOMER_ID)[columns]
    # integers as float64: whether a customer lacks a value must not change the column's type
    # (a served row without an age would not match a model logged with an integer age)
    table = table.astype({c: "float64" for c in table.select_dtypes("integer").columns})
    return table.add_prefix("profile_")


def _base_aggregates(data: DataConfig, cfg: FeatureConfig) -> list[BaseAggregate]:
    contact = tuple(cfg.contact_event_types)
    engage = tuple(cfg.engagement_event_types)
    purchase = tuple(data.event_types.purchase)
    hls = cfg.half_lives_days
    tag = cfg.half_life_tag
    out: list[BaseAggregate] = []

    for ch in data.channels:
        c = (ch.name,)
        if ch.outbound:
            response = (ch.response,) if ch.response else engage
            # the response rate's half-life joins the others if it is not one of them
            for h in dict.fromkeys([*hls, cfg.rate_half_life_days]):
                out.append(
                    BaseAggregate(
                        f"{ch.name}_contact_decayed_{tag(h)}", contact, "decayed_count", c, h
                    )
                )
                out.append(
                    BaseAggregate(
                        f"{ch.name}_response_decayed_{tag(h)}", response, "decayed_count", c, h
                    )
                )
            out.append(BaseAggregate(f"{ch.name}_contact_last", contact, "last", c))
            out.append(BaseAggregate(f"{ch.name}_response_last", response, "last", c))
            for w in cfg.fatigue_windows_days:
                out.append(
                    BaseAggregate(f"{ch.name}_contact_count_{w}d", contact, "window_count", c, w)
                )
            out.append(
                BaseAggregate(
                    f"{ch.name}_consent_granted_last",
                    (data.event_types.consent_granted,),
                    "last",
                    c,
                )
            )
            out.append(
                BaseAggregate(
                    f"{ch.name}_consent_revoked_last", tuple(cfg.revoking_event_types), "last", c
                )
            )
        for h in hls:
            out.append(
                BaseAggregate(
                    f"{ch.name}_engagement_decayed_{tag(h)}", engage, "decayed_count", c, h
                )
            )
            out.append(
                BaseAggregate(
                    f"{ch.name}_purchase_decayed_{tag(h)}", purchase, "decayed_count", c, h
                )
            )
            out.append(
                BaseAggregate(f"{ch.name}_spend_decayed_{tag(h)}", purchase, "decayed_amount", c, h)
            )
        out.append(BaseAggregate(f"{ch.name}_engagement_last", engage, "last", c))
        out.append(BaseAggregate(f"{ch.name}_purchase_last", purchase, "last", c))

    long_h = max(hls)
    for h in hls:
        out.append(
            BaseAggregate(f"all_purchase_decayed_{tag(h)}", purchase, "decayed_count", None, h)
        )
        out.append(
            BaseAggregate(f"all_spend_decayed_{tag(h)}", purchase, "decayed_amount", None, h)
        )
    physical = tuple(cfg.physical_channels) or None
    if physical:
        out.append(
            BaseAggregate(
                f"offline_purchase_decayed_{tag(long_h)}",
                purchase,
                "decayed_count",
                physical,
                long_h,
            )
        )
    out += [
        BaseAggregate("all_purchase_count", purchase, "count"),
        BaseAggregate("all_spend_sum", purchase, "amount"),
        BaseAggregate("all_purchase_last", purchase, "last"),
        BaseAggregate("all_purchase_first", purchase, "first"),
        BaseAggregate("all_engagement_last", engage, "last"),
        BaseAggregate("all_negative_last", tuple(cfg.negative_event_types), "last"),
    ]
    # tenure starts at the first event the customer or a channel made; an agent's note of an
    # answer to an offer (feedback) comes from a customer already known
    feedback = set(data.event_types.feedback)
    all_types = tuple(t for t in data.event_types.all if t not in feedback)
    out.append(BaseAggregate("all_event_first", all_types, "first"))
    for w in cfg.fatigue_windows_days:
        out.append(BaseAggregate(f"all_contact_count_{w}d", contact, "window_count", None, w))

    # when the customer engages: hour of day and weekday histograms, for send-time choice
    active = engage + purchase
    for hour in range(24):
        out.append(
            BaseAggregate(
                f"engagement_hour_{hour:02d}_count", active, "count", dim="hour", dim_value=hour
            )
        )
    for dow in range(7):
        out.append(
            BaseAggregate(f"engagement_dow_{dow}_count", active, "count", dim="dow", dim_value=dow)
        )
    # category affinity from purchases and product views
    browse = purchase + ("view",)
    for cat in cfg.categories:
        out.append(
            BaseAggregate(
                f"category_{cat}_decayed_{tag(long_h)}",
                browse,
                "decayed_count",
                None,
                long_h,
                "category",
                cat,
            )
        )
    return out


class _DerivationPlan:
    """Column indices of each derived feature group, resolved once; `run` is one compiled pass."""

    def __init__(self, fs: FeatureSet) -> None:
        cfg, data, idx = fs.config, fs.data, fs.base_index
        self.names: list[str] = []

        # pass-through: decayed counts/amounts, window counts, lifetime count and sum
        keep = [
            b.name
            for b in fs.base
            if b.op in ("decayed_count", "decayed_amount", "window_count", "count", "amount")
            and b.dim != "hour"
            and b.dim != "dow"
        ]
        self.copy_idx = np.array([idx[n] for n in keep], dtype=np.int64)
        self.names += keep

        # days since a last time: NaN when it never happened
        last_cols = [b.name for b in fs.base if b.op == "last" and "consent" not in b.name]
        self.since_idx = np.array([idx[n] for n in last_cols], dtype=np.int64)
        self.names += [n.removesuffix("_last") + "_days_since" for n in last_cols]

        # smoothed response rate: (responses + k * prior) / (contacts + k)
        tag = cfg.half_life_tag(cfg.rate_half_life_days)
        outbound = data.outbound_channels
        self.rate_resp = np.array(
            [idx[f"{c}_response_decayed_{tag}"] for c in outbound], dtype=np.int64
        )
        self.rate_cont = np.array(
            [idx[f"{c}_contact_decayed_{tag}"] for c in outbound], dtype=np.int64
        )
        self.rate_prior = np.array(
            [cfg.response_rate_priors.get(c, cfg.default_response_rate_prior) for c in outbound]
        )
        self.k = cfg.rate_prior_strength
        self.names += [f"{c}_response_rate" for c in outbound]

        # consent: granted at some time and not revoked since
        self.granted = np.array(
            [idx[f"{c}_consent_granted_last"] for c in outbound], dtype=np.int64
        )
        self.revoked = np.array(
            [idx[f"{c}_consent_revoked_last"] for c in outbound], dtype=np.int64
        )
        self.names += [f"{c}_consent" for c in outbound]

        # RFM and purchase rhythm: purchase count, spend, first and last purchase, first event,
        # long-decayed purchases and their offline part (-1: no offline channel)
        long_tag = cfg.half_life_tag(max(cfg.half_lives_days))
        self.rfm = np.array(
            [
                idx["all_purchase_count"],
                idx["all_spend_sum"],
                idx["all_purchase_first"],
                idx["all_purchase_last"],
                idx["all_event_first"],
                idx[f"all_purchase_decayed_{long_tag}"],
                idx.get(f"offline_purchase_decayed_{long_tag}", -1),
            ],
            dtype=np.int64,
        )
        self.names += [
            "monetary_mean",
            "inter_purchase_days",
            "tenure_days",
            "online_purchase_share",
        ]

        # preferred hour and weekday of engagement
        self.hours = np.array(
            [idx[f"engagement_hour_{h:02d}_count"] for h in range(24)], dtype=np.int64
        )
        self.dows = np.array([idx[f"engagement_dow_{d}_count"] for d in range(7)], dtype=np.int64)
        self.names += ["preferred_hour", "preferred_dow"]

        # category shares
        self.cats = np.array(
            [idx[f"category_{c}_decayed_{long_tag}"] for c in cfg.categories], dtype=np.int64
        )
        self.names += [f"category_{c}_share" for c in cfg.categories]

    def run(self, base: np.ndarray, as_of_us: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        as_of = np.ascontiguousarray(np.broadcast_to(as_of_us, (len(base),)), dtype=np.float64)
        shape = (len(base), len(self.names))
        if out is None:
            out = np.empty(shape)
        elif out.shape != shape or out.dtype != np.float64 or not out.flags.c_contiguous:
            raise ValueError(f"derive: out must be C-contiguous float64 {shape}, not {out.shape}")
        _derive_rows(
            np.ascontiguousarray(base),
            as_of,
            self.copy_idx,
            self.since_idx,
            self.rate_resp,
            self.rate_cont,
            self.rate_prior,
            float(self.k),
            self.granted,
            self.revoked,
            self.rfm,
            self.hours,
            self.dows,
            self.cats,
            out,
        )
        return out


@numba.njit(nogil=True, cache=True)
def _or_zero(x: float) -> float:
    """An aggregate with no matching event (NaN) counts as 0."""
    return 0.0 if math.isnan(x) else x


@numba.njit(nogil=True, cache=True)
def _first_argmax_if_any(row: np.ndarray, idx: np.ndarray) -> float:
    """Position of the largest of row[idx] (the first on ties; NaN counts as 0), NaN if all 0."""
    best, best_j, total = -1.0, 0, 0.0
    for j in range(len(idx)):
        v = _or_zero(row[idx[j]])
        total += v
        if v > best:
            best, best_j = v, j
    return float(best_j) if total > 0 else np.nan


@numba.njit(nogil=True, cache=True)
def _derive_rows(
    base: np.ndarray,
    as_of: np.ndarray,
    copy_idx: np.ndarray,
    since_idx: np.ndarray,
    rate_resp: np.ndarray,
    rate_cont: np.ndarray,
    rate_prior: np.ndarray,
    k: float,
    granted: np.ndarray,
    revoked: np.ndarray,
    rfm: np.ndarray,
    hours: np.ndarray,
    dows: np.ndarray,
    cats: np.ndarray,
    out: np.ndarray,
) -> None:
    """Every derived feature of every row, in `_DerivationPlan.names` order, in one pass (a
    customer's base row is read once; the numpy version made a temporary per group)."""
    count, spend, p_first, p_last, e_first = rfm[0], rfm[1], rfm[2], rfm[3], rfm[4]
    all_long, offline = rfm[5], rfm[6]
    for i in range(base.shape[0]):
        row, o, col = base[i], out[i], 0
        for j in copy_idx:
            o[col] = _or_zero(row[j])
            col += 1
        for j in since_idx:  # NaN when it never happened
            o[col] = (as_of[i] - row[j]) / US_PER_DAY
            col += 1
        for c in range(len(rate_resp)):  # smoothed: (responses + k * prior) / (contacts + k)
            resp, cont = _or_zero(row[rate_resp[c]]), _or_zero(row[rate_cont[c]])
            o[col] = (resp + k * rate_prior[c]) / (cont + k)
            col += 1
        for c in range(len(granted)):  # granted at some time and not revoked since
            g, r = row[granted[c]], row[revoked[c]]
            o[col] = 1.0 if not math.isnan(g) and (math.isnan(r) or g > r) else 0.0
            col += 1
        n, spent = _or_zero(row[count]), _or_zero(row[spend])
        o[col] = spent / n if n > 0 else np.nan  # monetary mean
        o[col + 1] = (row[p_last] - row[p_first]) / (n - 1) / US_PER_DAY if n >= 2 else np.nan
        o[col + 2] = (as_of[i] - row[e_first]) / US_PER_DAY  # tenure
        total = _or_zero(row[all_long])
        off = _or_zero(row[offline]) if offline >= 0 else 0.0
        o[col + 3] = 1.0 - off / total if total > 0 else np.nan  # online purchase share
        o[col + 4] = _first_argmax_if_any(row, hours)
        o[col + 5] = _first_argmax_if_any(row, dows)
        col += 6
        cat_total = 0.0
        for j in cats:
            cat_total += _or_zero(row[j])
        for j in cats:
            o[col] = _or_zero(row[j]) / cat_total if cat_total > 0 else np.nan
            col += 1
