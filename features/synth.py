"""A deterministic synthetic omnichannel world with known ground truth.

`generate_world` writes a contract-conforming data directory (`events/`, `customers/`) and, kept
apart, the truth behind it (`truth/`): who every identifier belongs to, every person's latent
traits, and for every outbound contact the true probabilities of a response and of a purchase with
and without the contact. Models trained on the events can then be judged against the truth.

The generative model, per person (all vectorised over a chunk of persons):

* a profile (age, region, loyalty tier, signup) and latents correlated with it: per-channel
  affinity on the logit scale, purchase intensity, order value, fatigue sensitivity, discount
  affinity, online share, preferred hour, category preferences and an uplift type;
* identifiers (crm, email, phone, loyalty, payment card, web cookies, app device) and the events
  that prove two of them belong together (consent, logins, checkouts, e-receipts, loyalty cards
  and phone numbers at the till); shops' guest cards and family tablets are shared identifiers;
* organic purchases, a Poisson process with rate intensity x seasonality(day) x an hour-of-day
  profile, and organic web and app visits;
* outbound campaign waves from the action catalogue, chosen by a logging policy with recorded
  propensities and a randomized holdout; responses damped by fatigue; unsubscribes that revoke
  consent, which later waves respect;
* a contact at time t changes the probability of at least one purchase in (t, t + H] from p0 (the
  organic probability) to p1 = p0 + tau, with tau = persuadability x channel factor (from the
  channel's affinity) x offer match x fatigue - sleeping-dog strength x the channel's
  intrusiveness; the change is realised by adding an induced purchase (tau > 0, likelier for
  responders) or deleting the organic purchases of the window (tau < 0) with the probabilities
  that make P(purchase in window) exactly p1.

Known approximation: p0 and p1 of a contact are exact for that contact alone. When the windows of
several contacts of one person overlap, their effects are realised one after the other (induced
purchases of one contact fall in the window of another, deletions remove purchases another
contact's p0 counted on, a contact raises the fatigue of the next), so realised purchase rates
after contacts deviate slightly from the recorded truth (about +0.1 to +0.2 points on average).

The persons are split into fixed-size chunks, each with its own random stream
`default_rng([seed, chunk])`; the campaign schedule comes from the seed alone. The output is
therefore identical whatever the number of worker processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

if TYPE_CHECKING:
    import pandas as pd

from features.contract import (
    ACTION_ID,
    CHANNEL,
    CUSTOMER_KEY,
    EVENT_ID,
    EVENT_SCHEMA,
    PROPENSITY,
    TS,
)

# --- vocabularies -------------------------------------------------------------------------------

OUTBOUND = ("email", "sms", "push", "direct_mail", "call_centre")
CHANNELS = (*OUTBOUND, "web", "app", "store")
EVENT_TYPES = (
    "sent",
    "holdout",
    "delivered",
    "open",
    "click",
    "visit",
    "view",
    "call",
    "purchase",
    "unsubscribe",
    "complaint",
    "consent_granted",
    "consent_revoked",
)
CATEGORIES = ("apparel", "beauty", "electronics", "home", "sports", "grocery")
OFFERS = ("discount", "new_arrivals", "loyalty_points", "catalog", "winback")
REGIONS = ("urban", "suburban", "rural")
TIERS = ("none", "silver", "gold")
SIGNUP_CHANNELS = ("store", "web", "app")
UPLIFT_TYPES = ("persuadable", "sure_thing", "lost_cause", "sleeping_dog")

_CH = {c: i for i, c in enumerate(CHANNELS)}
_ET = {e: i for i, e in enumerate(EVENT_TYPES)}
_BAD_CHANNEL = len(CHANNELS)  # code of the unknown channel written by dirty rows

# identifier kinds of a person; a key is addressed by (kind, person)
K_CRM, K_EMAIL, K_PHONE, K_LOYALTY, K_CARD, K_COOKIE0, K_COOKIE1, K_APP = range(8)
_KIND_TYPE = ("crm", "email", "phone", "loyalty", "card", "device", "device", "device")
_N_KINDS = len(_KIND_TYPE)
_GUEST = 100  # key code 100 + g: the shop's guest loyalty card g
_NOKEY = 99  # key code of the malformed `nokey` rows
_NONE = -1
# identifier kind each outbound channel's system keys its events by
_CHANNEL_KIND = {
    "email": K_EMAIL,
    "sms": K_PHONE,
    "push": K_APP,
    "direct_mail": K_CRM,
    "call_centre": K_PHONE,
}

SECONDS = 1.0 / 86_400.0  # one second in days
MINUTES = 60.0 * SECONDS
HOURS = 1.0 / 24.0
US_PER_DAY = 86_400_000_000


# --- the action catalogue -----------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One outbound action of the world's catalogue and its place in the campaign schedule."""

    action_id: str
    channel: str
    offer: str
    cost: float  # cost per contact
    send_hour: float  # hour of day (UTC) a wave starts
    spread_hours: float  # the contacts of a wave go out over this many hours
    cadence_days: int  # days between two waves of this action
    phase_days: int  # day of the first wave within the channel's cycle


ACTIONS: tuple[Action, ...] = (
    # email weekly, alternating discount and new arrivals; a loyalty mail every four weeks
    Action("email_discount", "email", "discount", 0.002, 9.0, 2.0, 14, 0),
    Action("email_newin", "email", "new_arrivals", 0.002, 9.0, 2.0, 14, 7),
    Action("email_loyalty", "email", "loyalty_points", 0.002, 9.0, 2.0, 28, 3),
    Action("sms_flash", "sms", "discount", 0.03, 12.0, 0.25, 14, 4),
    # push weekly, alternating
    Action("push_newin", "push", "new_arrivals", 0.001, 18.0, 0.1, 14, 1),
    Action("push_discount", "push", "discount", 0.001, 18.0, 0.1, 14, 8),
    # direct mail about six drops a year: a quarterly catalogue and a half-yearly winback letter
    Action("dm_catalog", "direct_mail", "catalog", 0.80, 10.0, 0.5, 91, 10),
    Action("dm_winback", "direct_mail", "winback", 0.80, 10.0, 0.5, 182, 55),
    Action("call_winback", "call_centre", "winback", 4.00, 9.0, 9.0, 30, 15),
)
_ACTION_INDEX = {a.action_id: i for i, a in enumerate(ACTIONS)}


def actions_catalogue() -> list[dict[str, object]]:
    """The world's actions as plain records (channel, offer, cost, schedule)."""
    return [asdict(a) for a in ACTIONS]


# --- seasonality and the hour-of-day profile of purchases ---------------------------------------

SEASON_PEAK_DAY_OF_YEAR = 334  # 0-based day of year of the Nov-Dec peak (1 Dec)
SEASON_PEAK_WIDTH_DAYS = 20.0  # standard deviation of the peak's bell
SEASON_PEAK_AMPLITUDE = 0.9  # relative height of the peak over the rest of the year
WEEKDAY_FACTORS = (0.92, 0.92, 0.95, 0.98, 1.05, 1.15, 1.03)  # Monday..Sunday, mean 1
ONLINE_HOUR_SD = 2.5  # hours: sd of online purchases and visits around the preferred hour
STORE_HOURS = (9.0, 21.0)  # store purchases uniform within opening hours

_DOY = np.arange(365)
_DIST = np.minimum(
    np.abs(_DOY - SEASON_PEAK_DAY_OF_YEAR), 365 - np.abs(_DOY - SEASON_PEAK_DAY_OF_YEAR)
)
_SEASON_NORM = (
    1.0 + SEASON_PEAK_AMPLITUDE * np.exp(-0.5 * (_DIST / SEASON_PEAK_WIDTH_DAYS) ** 2).mean()
)


def seasonality(epoch_days: np.ndarray) -> np.ndarray:
    """Purchase-rate multiplier of each calendar day (days since 1970-01-01); mean 1 over a year."""
    d = np.asarray(epoch_days, dtype=np.int64)
    dates = d.astype("datetime64[D]")
    doy = (dates - dates.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)
    dist = np.minimum(
        np.abs(doy - SEASON_PEAK_DAY_OF_YEAR), 365 - np.abs(doy - SEASON_PEAK_DAY_OF_YEAR)
    )
    peak = 1.0 + SEASON_PEAK_AMPLITUDE * np.exp(-0.5 * (dist / SEASON_PEAK_WIDTH_DAYS) ** 2)
    weekday = (d + 3) % 7  # 1970-01-01 was a Thursday
    return peak / _SEASON_NORM * np.asarray(WEEKDAY_FACTORS)[weekday]


def seasonality_definition() -> dict[str, object]:
    """The seasonality and hour profile of the purchase rate, as recorded in `truth/world.json`."""
    return {
        "rate": "intensity_per_year / 365 * peak(day_of_year) * weekday_factor * hour_profile",
        "peak": "(1 + amplitude * exp(-0.5 * (circular_distance(doy, peak_doy) / width)^2)) / norm",
        "peak_day_of_year_0_based": SEASON_PEAK_DAY_OF_YEAR,
        "peak_width_days": SEASON_PEAK_WIDTH_DAYS,
        "peak_amplitude": SEASON_PEAK_AMPLITUDE,
        "norm": float(_SEASON_NORM),
        "weekday_factors_monday_first": list(WEEKDAY_FACTORS),
        "hour_profile": (
            "online_share * wrapped_logistic(preferred_hour, sd=ONLINE_HOUR_SD) + "
            "(1 - online_share) * uniform(STORE_HOURS)"
        ),
        "online_hour_sd": ONLINE_HOUR_SD,
        "store_hours": list(STORE_HOURS),
    }


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    """The logistic function, without overflow warnings."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def _logistic_scale(sd_hours: float) -> float:
    """Scale (in days) of a logistic distribution with this standard deviation in hours."""
    return sd_hours / 24.0 * math.sqrt(3.0) / math.pi


def _intraday_cdf(x: np.ndarray, online: np.ndarray, pref_hour: np.ndarray) -> np.ndarray:
    """Share of a day's purchase rate before fraction x of the day (mixture of the two profiles)."""
    mu = pref_hour / 24.0
    scale = _logistic_scale(ONLINE_HOUR_SD)
    # wrapped logistic on [0, 1): the neighbouring periods k = -1, 0, 1 suffice for scale << 1
    wrapped = sum(_sigmoid((x - mu + k) / scale) - _sigmoid((k - mu) / scale) for k in (-1, 0, 1))
    lo, hi = STORE_HOURS[0] / 24.0, STORE_HOURS[1] / 24.0
    store = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return online * wrapped + (1.0 - online) * store


def _rate_integral(
    lam: np.ndarray, online: np.ndarray, pref: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Expected organic purchases in (a, b] (epoch days) of persons with yearly intensity lam."""
    a = np.asarray(a, dtype=float)
    b = np.maximum(np.asarray(b, dtype=float), a)
    if a.size == 0:
        return np.zeros(0)
    fa, fb = np.floor(a), np.floor(b)
    d0 = int(fa.min())
    s = seasonality(np.arange(d0, int(fb.max()) + 2)) / 365.0
    cum = np.concatenate([[0.0], np.cumsum(s)])  # cum[k] = sum of s over days d0 .. d0 + k - 1
    ia, ib = (fa - d0).astype(np.int64), (fb - d0).astype(np.int64)
    # whole days strictly between, plus the tail of a's day and the head of b's day
    total = (
        cum[ib]
        - cum[ia + 1]
        + s[ia] * (1.0 - _intraday_cdf(a - fa, online, pref))
        + s[ib] * _intraday_cdf(b - fb, online, pref)
    )
    return lam * np.maximum(total, 0.0)


def _epoch_days(ts: pd.Series | pd.Timestamp | datetime) -> np.ndarray | float:
    """Timestamps as fractional days since 1970-01-01 UTC (naive timestamps are taken as UTC)."""
    import pandas as pd

    if isinstance(ts, pd.Series):
        s = pd.to_datetime(ts)
        s = s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
        us = s.astype("datetime64[us, UTC]").astype("int64").to_numpy()
        return us / US_PER_DAY
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.value / 1e9 / 86_400.0


def true_purchase_probability(
    truth_customers: pd.DataFrame, at: datetime | pd.Timestamp, horizon_days: float
) -> pd.Series:
    """True organic probability (no contact) of at least one purchase in (at, at + horizon].

    `truth_customers` is `truth/customers` (columns purchase_intensity, online_share,
    preferred_hour, signup_ts); persons who sign up inside the window count from their signup.
    """
    import pandas as pd

    at_day = float(_epoch_days(at))
    signup = np.asarray(_epoch_days(truth_customers["signup_ts"]))
    a = np.maximum(at_day, signup)
    b = np.full(len(a), at_day + horizon_days)
    integral = _rate_integral(
        truth_customers["purchase_intensity"].to_numpy(float),
        truth_customers["online_share"].to_numpy(float),
        truth_customers["preferred_hour"].to_numpy(float),
        a,
        b,
    )
    integral = np.where(a < b, integral, 0.0)
    return pd.Series(-np.expm1(-integral), index=truth_customers.index, name="p_purchase")


# --- parameters -------------------------------------------------------------------------------


def _per_channel(email: float, sms: float, push: float, dm: float, call: float) -> Callable:
    """A default factory of a per-outbound-channel mapping."""
    return lambda: {
        "email": email,
        "sms": sms,
        "push": push,
        "direct_mail": dm,
        "call_centre": call,
    }


@dataclass(frozen=True)
class WorldParams:
    """Realism parameters of the world; defaults aim at published industry rates."""

    chunk_size: int = 50_000  # persons per unit of work; fixes the random streams, not the workers
    horizon_days: float = 7.0  # purchase horizon H of the treatment effect of a contact
    # population
    existing_share: float = 0.70  # persons signed up before the history starts
    max_tenure_years: float = 5.0  # longest tenure of an existing customer at the start
    age_mean: float = 45.0  # age ~ normal, clipped to 18-80
    age_sd: float = 15.0  # standard deviation of age
    region_shares: dict[str, float] = field(
        default_factory=lambda: {"urban": 0.45, "suburban": 0.35, "rural": 0.20}
    )  # share of persons per region
    loyalty_share: float = 0.60  # loyalty members (silver or gold); more likely for heavy buyers
    gold_share: float = 0.30  # share of members in the gold tier; more likely for heavy buyers
    loyalty_join_delay_days: float = 60.0  # mean delay from signup to joining the loyalty scheme
    email_share: float = 0.90  # persons with an e-mail address
    phone_share: float = 0.70  # persons with a mobile phone number
    app_share: float = 0.35  # app users (more likely young and urban)
    cookie_shares: tuple[float, float, float] = (0.20, 0.50, 0.30)  # persons with 0, 1, 2 cookies
    family_tablet_share: float = 0.01  # persons who share an app device with another person
    guest_cards: int = 20  # shops' guest loyalty cards, each shared by many non-members
    guest_card_share: float = 0.30  # non-members' store purchases rung up on the guest card
    # purchases
    purchase_rate_mean: float = 3.0  # mean organic purchases per person and year
    purchase_rate_sigma: float = 0.9  # sd of log intensity: heavy tail of frequent buyers
    order_value_mean: float = 70.0  # mean order value across persons
    order_value_sigma: float = 0.35  # sd of log mean order value across persons
    amount_sigma: float = 0.5  # sd of log amount of one order around the person's mean
    online_intercept: float = -0.4  # logit of the online share of purchases at age 45, suburban
    checkout_link_share: float = 0.85  # online purchases that log the e-mail at checkout
    ereceipt_share: float = (
        0.30  # store purchases with an e-receipt (links card or loyalty to e-mail)
    )
    phone_at_till_share: float = 0.15  # members' store purchases where the phone is given
    forgot_card_share: float = 0.10  # members' store purchases paid by card without loyalty card
    # organic engagement
    web_visits_per_year: float = 10.0  # web visits of a cookie holder with average online share
    app_visits_per_year: float = 20.0  # app visits of an app user with average online share
    view_share: float = 0.5  # visits followed by a product view with a category
    web_login_share: float = 0.25  # web visits logged in (cookie linked to the e-mail)
    # channel affinity and responses
    affinity_general_sd: float = 0.45  # sd of the responsiveness shared by all channels (logit)
    affinity_channel_sd: float = 0.55  # sd of the channel-specific affinity (logit)
    response_base: dict[str, float] = field(
        default_factory=_per_channel(-4.0, -3.1, -3.0, -3.4, -1.1)
    )  # logit of the response (email click, sms click, push open, mail visit, call answered)
    email_open_base: float = -1.5  # logit of an e-mail open (same affinity terms as the click)
    delivery_rate: dict[str, float] = field(
        default_factory=_per_channel(1.0, 0.97, 0.90, 1.0, 1.0)
    )  # share of contacts delivered (sms, push get a `delivered` event)
    immediate_share: dict[str, float] = field(
        default_factory=_per_channel(0.4, 0.8, 0.7, 0.0, 1.0)
    )  # responses within minutes; the rest come at the person's preferred hour, within 3 days
    discount_match: float = 0.5  # logit shift per unit of discount affinity for discount offers
    fatigue_sensitivity_mean: float = 0.08  # response multiplier exp(-sens * recent contacts)
    fatigue_half_life_days: float = 10.0  # half-life of the recent-contact count
    # treatment effects
    uplift_type_shares: dict[str, float] = field(
        default_factory=lambda: {
            "persuadable": 0.30,
            "sure_thing": 0.20,
            "lost_cause": 0.35,
            "sleeping_dog": 0.15,
        }
    )  # mixture of uplift types (depends on intensity, affinity, age and tier)
    uplift_scale: dict[str, float] = field(
        default_factory=_per_channel(0.010, 0.015, 0.006, 0.030, 0.060)
    )  # purchase-probability lift of a contact on a persuadable of average affinity
    intrusiveness: dict[str, float] = field(
        default_factory=_per_channel(0.004, 0.008, 0.003, 0.006, 0.025)
    )  # purchase-probability loss of a contact on a sleeping dog of average strength
    induced_response_lift: float = 5.0  # induced purchases this much likelier for responders
    # consent
    consent_rates: dict[str, float] = field(
        default_factory=_per_channel(0.80, 0.45, 0.60, 0.90, 0.60)
    )  # initial consent among persons with the channel's identifier
    unsubscribe_rate: dict[str, float] = field(
        default_factory=_per_channel(0.0012, 0.004, 0.002, 0.001, 0.008)
    )  # unsubscribes per contact at zero fatigue
    complaint_rate: dict[str, float] = field(
        default_factory=_per_channel(0.0002, 0.0005, 0.0, 0.0001, 0.001)
    )  # complaints per contact (also revoke consent)
    unsubscribe_fatigue: float = 0.15  # relative rise of opt-outs per recent contact
    unsubscribe_sleeping_dog: float = (
        1.0  # relative rise of opt-outs per unit sleeping-dog strength
    )
    regrant_prob: float = 0.05  # opt-outs later granting consent again
    regrant_delay_days: float = 60.0  # mean delay of a re-grant
    # logging policy: pi = clip(sigmoid(alpha + terms), bounds)
    policy_alpha: dict[str, float] = field(
        default_factory=lambda: {
            "email_discount": 0.3,
            "email_newin": 0.0,
            "email_loyalty": -0.3,
            "sms_flash": -0.8,
            "push_newin": 0.2,
            "push_discount": 0.0,
            "dm_catalog": -0.8,
            "dm_winback": -2.0,
            "call_winback": -3.0,
        }
    )  # intercept of each action's logging policy
    policy_recent_purchase: float = 0.5  # bought within `recent_days`
    policy_recent_engagement: float = 0.8  # engaged with the channel within `recent_days`
    policy_tier: float = 0.3  # per tier level (silver 1, gold 2)
    policy_lapsed: float = 1.5  # winback actions: no purchase within `lapsed_days`
    propensity_bounds: tuple[float, float] = (0.05, 0.95)  # clip of the policy's probability
    holdout_share: float = 0.10  # randomized share of chosen persons held out (not contacted)
    recent_days: float = 30.0  # window of "recent" purchase and engagement
    lapsed_days: float = 90.0  # no purchase for this long: lapsed (winback target)

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.horizon_days <= 0 or self.guest_cards < 1:
            raise ValueError("WorldParams: chunk_size, horizon_days and guest_cards must be > 0")
        if not 0.0 < self.holdout_share < 1.0:
            raise ValueError(
                f"WorldParams.holdout_share must be in (0, 1), got {self.holdout_share}"
            )


@dataclass
class WorldSummary:
    """What `generate_world` wrote."""

    customers: int
    identifiers: int
    events: int
    contacts: int
    seconds: float
    files: int
    dirty_rows: int = 0


# --- small vectorised helpers -------------------------------------------------------------------


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijection of uint64, so distinct inputs give distinct keys."""
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _hex_strings(prefix: str, values: np.ndarray) -> pa.StringArray:
    """Arrow strings `prefix` + 16 hex digits of each uint64, built without a Python loop."""
    n = len(values)
    pre = prefix.encode()
    width = len(pre) + 16
    digits = np.frombuffer(values.astype(">u8").tobytes().hex().encode(), dtype=np.uint8)
    buf = np.empty((n, width), dtype=np.uint8)
    buf[:, : len(pre)] = np.frombuffer(pre, dtype=np.uint8)
    buf[:, len(pre) :] = digits.reshape(n, 16)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf)).cast(
        pa.string()
    )


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of arange(lo[i], hi[i]) over i."""
    n = np.maximum(hi - lo, 0)
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(n) - n
    return np.arange(total, dtype=np.int64) + np.repeat(lo - starts, n)


def _choice_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a probability matrix."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), probs.shape[1] - 1)


def _wrapped_hour(rng: np.random.Generator, pref_hour: np.ndarray, sd_hours: float) -> np.ndarray:
    """Fraction of the day around the preferred hour (wrapped logistic, CDF in closed form)."""
    u = rng.random(len(pref_hour))
    u = np.clip(u, 1e-12, 1.0 - 1e-12)
    return (pref_hour / 24.0 + _logistic_scale(sd_hours) * np.log(u / (1.0 - u))) % 1.0


def _at_preferred_hour(
    rng: np.random.Generator, t: np.ndarray, pref_hour: np.ndarray, min_days: float, extra: int
) -> np.ndarray:
    """First time after t + min_days at the person's preferred hour (+-1 h), plus 0..extra days."""
    base = t + min_days
    out = np.floor(base) + _wrapped_hour(rng, pref_hour, 1.0)
    out = np.where(out <= base, out + 1.0, out)
    return out + rng.integers(0, extra + 1, len(t))


class _Pending:
    """State changes that happen in the future of the sweep: (person, time, value) applied later."""

    def __init__(self) -> None:
        self.person = np.zeros(0, dtype=np.int64)
        self.time = np.zeros(0)
        self.value = np.zeros(0, dtype=bool)

    def add(self, person: np.ndarray, t: np.ndarray, value: bool = True) -> None:
        if len(person):
            self.person = np.concatenate([self.person, person])
            self.time = np.concatenate([self.time, t])
            self.value = np.concatenate([self.value, np.full(len(person), value)])

    def take(self, due: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return the due entries, in time order."""
        order = np.argsort(self.time[due], kind="stable")
        out = self.person[due][order], self.time[due][order], self.value[due][order]
        keep = ~due
        self.person, self.time, self.value = self.person[keep], self.time[keep], self.value[keep]
        return out

    def apply_max(self, state: np.ndarray, now: float) -> None:
        """state[p] = max(state[p], time) for entries up to now (last purchase, engagement)."""
        p, t, _ = self.take(self.time <= now)
        np.maximum.at(state, p, t)

    def apply_consent(self, state: np.ndarray, now: float, revoke_until: float) -> None:
        """Set consent in time order: grants due by now, revocations already by revoke_until."""
        p, _, v = self.take(np.where(self.value, self.time <= now, self.time <= revoke_until))
        if len(p):
            # the last change per person wins
            last = len(p) - 1 - np.unique(p[::-1], return_index=True)[1]
            state[p[last]] = v[last]


class _EventLog:
    """A chunk's events as code columns, appended in blocks and encoded to strings at the end."""

    def __init__(self) -> None:
        self.blocks: list[tuple[np.ndarray, ...]] = []
        self.size = 0

    def add(
        self,
        person: np.ndarray,
        t: np.ndarray,
        channel: int | np.ndarray,
        event_type: int | np.ndarray,
        key: int | np.ndarray,
        link: int | np.ndarray = _NONE,
        action: int | np.ndarray = _NONE,
        amount: float | np.ndarray = np.nan,
        category: int | np.ndarray = _NONE,
        propensity: float | np.ndarray = np.nan,
    ) -> None:
        n = len(person)
        if n == 0:
            return

        def col(v: object, dtype: type) -> np.ndarray:
            return np.broadcast_to(np.asarray(v, dtype=dtype), (n,))

        self.blocks.append(
            (
                col(person, np.int64),
                col(t, np.float64),
                col(channel, np.int8),
                col(event_type, np.int8),
                col(key, np.int16),
                col(link, np.int16),
                col(action, np.int8),
                col(amount, np.float64),
                col(category, np.int8),
                col(propensity, np.float64),
            )
        )
        self.size += n

    def columns(self) -> list[np.ndarray]:
        return [np.concatenate(parts) for parts in zip(*self.blocks, strict=True)]


# --- one chunk of persons -----------------------------------------------------------------------


@dataclass(frozen=True)
class _ChunkSpec:
    """Everything a worker needs to build one chunk (picklable)."""

    out: Path
    seed: int
    chunk: int
    first_person: int
    n: int
    days: int
    start_epoch: int  # start date as days since 1970-01-01
    params: WorldParams
    wave_time: np.ndarray  # days since start
    wave_action: np.ndarray  # index into ACTIONS
    dirty_rate: float


class _Chunk:
    """Persons of one chunk: their latents, identifiers, history and truth."""

    def __init__(self, spec: _ChunkSpec) -> None:
        self.spec = spec
        self.p = spec.params
        self.n = spec.n
        self.D = float(spec.days)
        self.rng = np.random.default_rng([spec.seed, spec.chunk])
        self.log = _EventLog()
        season = seasonality(spec.start_epoch + np.arange(spec.days)) / 365.0
        self.cum_season = np.concatenate([[0.0], np.cumsum(season)])  # per year, day starts
        self.contacts: list[dict[str, np.ndarray]] = []
        self._persons()
        self._identifiers()

    # persons and latents ------------------------------------------------------------------------

    def _persons(self) -> None:
        """Profile and latents of every person, correlated as the module docstring says."""
        rng, p, n = self.rng, self.p, self.n
        self.age = np.clip(np.round(rng.normal(p.age_mean, p.age_sd, n)), 18, 80).astype(np.int64)
        za = (self.age - 45.0) / 15.0
        self.za = za
        shares = np.array([p.region_shares[r] for r in REGIONS])
        self.region = rng.choice(len(REGIONS), n, p=shares / shares.sum())
        urban, rural = (self.region == 0).astype(float), (self.region == 2).astype(float)
        self.pref_hour = np.clip(rng.normal(21.0 - 0.15 * (self.age - 18), 2.0), 6.0, 23.5)

        existing = rng.random(n) < p.existing_share
        # signup: existing customers up to max tenure before the start, new ones during the history
        signup_day = np.where(
            existing,
            -np.ceil(rng.random(n) * p.max_tenure_years * 365.0),
            np.floor(rng.random(n) * self.D),
        )
        sc_logits = np.stack([0.6 * za, np.zeros(n), -0.8 * za + 0.3 * urban - 0.3], axis=1)
        self.signup_channel = _choice_rows(rng, np.exp(sc_logits))
        store_hour = rng.uniform(*STORE_HOURS, n) / 24.0
        online_hour = _wrapped_hour(rng, self.pref_hour, ONLINE_HOUR_SD)
        self.signup_t = signup_day + np.where(self.signup_channel == 0, store_hour, online_hour)
        self.existing = existing

        # purchase intensity: lognormal with mean purchase_rate_mean
        s = p.purchase_rate_sigma
        zl = rng.normal(0.0, 1.0, n)
        self.lam = p.purchase_rate_mean * np.exp(s * zl - s * s / 2.0)
        self.zl = zl

        # loyalty tier, correlated with intensity
        member = rng.random(n) < _sigmoid(_logit(p.loyalty_share) + 0.8 * zl)
        gold = member & (
            rng.random(n) < _sigmoid(_logit(p.gold_share) + 1.0 * zl + rng.normal(0, 0.5, n))
        )
        # joining the scheme: at a store signup, else after a delay; joining after the end = none
        join = np.where(
            self.signup_channel == 0,
            self.signup_t,
            np.floor(self.signup_t + rng.exponential(p.loyalty_join_delay_days, n))
            + rng.uniform(*STORE_HOURS, n) / 24.0,
        )
        join = np.where(join < self.signup_t, join + 1.0, join)
        self.member = member & (join < self.D)
        self.join_t = np.where(self.member, join, np.inf)
        self.tier = np.where(self.member, np.where(gold, 2, 1), 0)
        self.home_store = rng.integers(0, p.guest_cards, n)

        lv = p.order_value_sigma
        self.value = np.exp(
            np.log(p.order_value_mean)
            - lv * lv / 2.0
            + 0.12 * za
            + 0.15 * (self.tier == 2)
            + 0.05 * (self.tier == 1)
            + lv * rng.normal(0.0, 1.0, n)
        )

        # identifiers the person has (the keys are made in _identifiers)
        self.has_email = rng.random(n) < p.email_share
        self.has_phone = rng.random(n) < p.phone_share
        self.app_user = rng.random(n) < _sigmoid(_logit(p.app_share) - 0.8 * za + 0.3 * urban - 0.1)
        c0, c1, _ = p.cookie_shares
        u = rng.random(n) - 0.05 * np.clip(za, -2, 2)  # older persons use fewer browsers
        self.n_cookies = (u > c0).astype(np.int64) + (u > c0 + c1)
        online_logit = p.online_intercept - 0.7 * za + 0.4 * urban - 0.6 * rural
        self.online = _sigmoid(online_logit + rng.normal(0.0, 1.0, n))
        self.online = np.where((self.n_cookies > 0) | self.app_user, self.online, 0.0)

        # channel affinities: profile mean + shared responsiveness + channel noise (logit scale)
        g = rng.normal(0.0, p.affinity_general_sd, n)
        means = {
            "email": 0.3 * za,
            "sms": -0.3 * za,
            "push": -0.4 * za + 0.2 * urban,
            "direct_mail": 0.5 * za + 0.4 * rural - 0.2 * urban,
            "call_centre": 0.4 * za + 0.2 * rural,
        }
        self.aff = {c: means[c] + g + rng.normal(0.0, p.affinity_channel_sd, n) for c in OUTBOUND}
        self.general = g
        self.fatigue_sens = p.fatigue_sensitivity_mean * np.exp(rng.normal(-0.125, 0.5, n))
        self.discount_aff = rng.normal(0.0, 1.0, n) + 0.3 * (self.tier == 0)

        # category preferences: Dirichlet with profile-dependent concentrations
        young = np.clip(-za, 0, None)
        old = np.clip(za, 0, None)
        alpha = np.full((n, len(CATEGORIES)), 0.8)
        alpha[:, 0] += 0.6 * young  # apparel
        alpha[:, 2] += 0.5 * young  # electronics
        alpha[:, 3] += 0.6 * old  # home
        alpha[:, 5] += 0.5 * old  # grocery
        gam = rng.gamma(alpha)
        self.cat_pref = gam / gam.sum(axis=1, keepdims=True)
        self.cat_cum = np.cumsum(self.cat_pref, axis=1)

        # uplift types: multinomial logit on latents and profile, intercepts fitted to the shares
        scores = np.stack(
            [
                0.3 * self.discount_aff - 0.2 * za,
                1.0 * zl + 1.5 * g,
                -0.8 * zl - 1.0 * g,
                0.6 * za + 0.8 * (self.tier == 2),
            ],
            axis=1,
        )
        target = np.array([p.uplift_type_shares[t] for t in UPLIFT_TYPES])
        target = target / target.sum()
        b = np.zeros(len(UPLIFT_TYPES))
        for _ in range(30):
            e = np.exp(scores + b - (scores + b).max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
            b += np.log(target / probs.mean(axis=0))
        self.type_probs = probs  # what the latents say about the type, before the draw
        self.uplift_type = _choice_rows(rng, probs)
        self.persuadability = np.where(
            self.uplift_type == 0, np.exp(rng.normal(-0.18, 0.6, n)), 0.0
        )
        self.dog = np.where(self.uplift_type == 3, np.exp(rng.normal(-0.18, 0.6, n)), 0.0)

        # app install and first app login; push needs an own device
        new_install = np.where(
            self.signup_channel == 2, self.signup_t, self.signup_t + rng.exponential(20.0, n)
        )
        install = np.where(existing, 0.0, new_install)
        login = np.where(existing, rng.exponential(15.0, n), install)
        self.app_user &= install < self.D
        self.install_t = np.where(self.app_user, install, np.inf)
        self.login_t = np.where(self.app_user, np.maximum(login, install), np.inf)
        self.app_owner = np.arange(n)  # whose app device a person's app events are keyed by
        self._family_tablets()

        # consent: initial grants among persons with the channel's identifier
        has = {
            "email": self.has_email,
            "sms": self.has_phone,
            "push": self.app_user & (self.app_owner == np.arange(n)),
            "direct_mail": np.ones(n, dtype=bool),
            "call_centre": self.has_phone,
        }
        self.has = has
        first = np.where(existing, rng.random(n) * 0.001, self.signup_t + SECONDS)
        self.consent = {}
        self.consent_from = {}
        for c in OUTBOUND:
            granted = has[c] & (rng.random(n) < p.consent_rates[c])
            start = np.maximum(first, self.install_t + SECONDS) if c == "push" else first
            self.consent[c] = granted.copy()
            self.consent_from[c] = np.where(granted, start, np.inf)

    def _family_tablets(self) -> None:
        """~family_tablet_share of persons use an app device owned by another person of the chunk."""
        rng, n = self.rng, self.n
        self.tablet_a = self.tablet_b = np.zeros(0, dtype=np.int64)
        owners = np.flatnonzero(self.app_user)
        pairs = min(rng.binomial(n, self.p.family_tablet_share / 2.0), len(owners), n // 2)
        if pairs == 0:
            return
        a = rng.choice(owners, pairs, replace=False)
        b = rng.choice(np.setdiff1d(np.arange(n), a), pairs, replace=False)
        install = np.maximum(self.install_t[a], self.signup_t[b]) + rng.exponential(10.0, pairs)
        ok = install < self.D
        a, b, install = a[ok], b[ok], install[ok]
        self.app_owner[b] = a
        self.app_user[b] = True
        self.install_t[b] = install
        self.login_t[b] = install
        self.tablet_a, self.tablet_b = a, b

    def _identifiers(self) -> None:
        """Keys of every (identifier kind, person); globally unique via a bijective hash."""
        spec = self.spec
        local = np.arange(self.n, dtype=np.uint64)
        seed_mix = _mix64(np.uint64(spec.seed % 2**64))
        parts = []
        for kind, type_ in enumerate(_KIND_TYPE):
            x = (
                (np.uint64(kind) << np.uint64(56))
                | (np.uint64(spec.chunk) << np.uint64(32))
                | local
            )
            parts.append(_hex_strings(f"{type_}:", _mix64(x ^ seed_mix)))
        guests = [f"loyalty:guest-store-{g + 1:02d}" for g in range(self.p.guest_cards)]
        self.key_dictionary = pa.concat_arrays([*parts, pa.array([*guests, "nokey"])])
        self.has_kind = np.stack(
            [
                np.ones(self.n, dtype=bool),
                self.has_email,
                self.has_phone,
                self.member,
                np.ones(self.n, dtype=bool),
                self.n_cookies >= 1,
                self.n_cookies >= 2,
                self.app_user & (self.app_owner == np.arange(self.n)),
            ]
        )

    # organic behaviour ----------------------------------------------------------------------------

    def _sample_times(
        self, rate: np.ndarray, begin: np.ndarray, online: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Poisson events with yearly rate x seasonality from `begin` to the end of the history.

        Returns person, time (days since start) and whether each is online (hour profile: around
        the preferred hour online, store hours otherwise); `online=None` means always online.
        """
        rng = self.rng
        begin = np.clip(begin, 0.0, self.D)
        d0 = np.minimum(np.floor(begin).astype(np.int64), self.spec.days)
        mass = self.cum_season[-1] - self.cum_season[d0]
        counts = rng.poisson(rate * mass)
        person = np.repeat(np.arange(self.n), counts)
        u = self.cum_season[d0[person]] + rng.random(len(person)) * mass[person]
        day = np.clip(np.searchsorted(self.cum_season, u, side="right") - 1, 0, self.spec.days - 1)
        if online is None:
            is_online = np.ones(len(person), dtype=bool)
        else:
            is_online = rng.random(len(person)) < online[person]
        frac = np.where(
            is_online,
            _wrapped_hour(rng, self.pref_hour[person], ONLINE_HOUR_SD),
            rng.uniform(*STORE_HOURS, len(person)) / 24.0,
        )
        t = day + frac
        keep = t >= begin[person]  # thinning on the first day: exact for a Poisson process
        return person[keep], t[keep], is_online[keep]

    def _organic_purchases(self) -> None:
        """Organic purchase times, kept sorted by (person, time) so contacts can delete them."""
        begin = np.maximum(self.signup_t, 0.0)
        person, t, online = self._sample_times(self.lam, begin, self.online)
        order = np.lexsort((t, person))
        self.op_person, self.op_t, self.op_online = person[order], t[order], online[order]
        self.op_alive = np.ones(len(order), dtype=bool)
        self.op_span = self.D + 10.0 * self.p.horizon_days + 10.0
        self.op_key = self.op_person * self.op_span + self.op_t  # sorted: (person, time)
        self.op_by_time = np.argsort(self.op_t, kind="stable")
        self.op_time_sorted = self.op_t[self.op_by_time]
        self.op_cursor = 0

    def _organic_visits(self) -> None:
        """Web and app visits (some logged in), app logins and loyalty registrations."""
        rng, p, n = self.rng, self.p, self.n
        mean_online = max(float(self.online.mean()), 1e-9)
        taste = np.exp(rng.normal(-0.18, 0.6, n)) * (0.5 + self.online) / (0.5 + mean_online)
        # web visits on one of the person's cookies, some logged in
        rate = np.where(self.n_cookies > 0, p.web_visits_per_year * taste, 0.0)
        person, t, _ = self._sample_times(rate, np.maximum(self.signup_t, 0.0), None)
        cookie = K_COOKIE0 + (rng.random(len(person)) * self.n_cookies[person]).astype(np.int64)
        login = self.has_email[person] & (rng.random(len(person)) < p.web_login_share)
        self.log.add(person, t, _CH["web"], _ET["visit"], cookie, np.where(login, K_EMAIL, _NONE))
        self._views(person, t, _CH["web"], cookie)
        # app: a login at first use, then visits
        users = np.flatnonzero(self.app_user & (self.login_t < self.D))
        self.log.add(users, self.login_t[users], _CH["app"], _ET["visit"], K_APP, K_CRM)
        rate = np.where(self.app_user, p.app_visits_per_year * taste, 0.0)
        person, t, _ = self._sample_times(rate, self.install_t, None)
        self.log.add(person, t, _CH["app"], _ET["visit"], K_APP)
        self._views(person, t, _CH["app"], K_APP)
        # loyalty registration at the till during the history
        joined = np.flatnonzero(self.member & (self.join_t >= 0.0))
        self.log.add(joined, self.join_t[joined], _CH["store"], _ET["visit"], K_LOYALTY, K_CRM)

    def _views(
        self, person: np.ndarray, t: np.ndarray, channel: int, key: np.ndarray | int
    ) -> None:
        """Product views with a category after some of the visits."""
        rng = self.rng
        viewed = rng.random(len(person)) < self.p.view_share
        key = np.broadcast_to(key, person.shape)[viewed]
        person, t = person[viewed], t[viewed] + rng.random(viewed.sum()) * 10.0 * MINUTES
        self.log.add(person, t, channel, _ET["view"], key, category=self._category(person))

    def _category(self, person: np.ndarray) -> np.ndarray:
        """A category code per row, drawn from the person's preferences."""
        u = self.rng.random(len(person))
        return np.minimum((self.cat_cum[person] < u[:, None]).sum(axis=1), len(CATEGORIES) - 1)

    def _log_purchases(
        self, person: np.ndarray, t: np.ndarray, online: np.ndarray, action: np.ndarray | int
    ) -> None:
        """Purchase events: channel and keys from the person's identifiers at that time."""
        rng, p = self.rng, self.p
        k = len(person)
        has_app = self.app_user[person] & (self.install_t[person] <= t)
        cookies = self.n_cookies[person]
        app = online & has_app & ((cookies == 0) | (rng.random(k) < 0.5 + 0.2 * self.za[person]))
        web = online & ~app & (cookies > 0)
        store = ~app & ~web
        channel = np.where(app, _CH["app"], np.where(web, _CH["web"], _CH["store"]))
        cookie = K_COOKIE0 + (rng.random(k) * np.maximum(cookies, 1)).astype(np.int64)
        member = self.member[person] & (self.join_t[person] <= t)
        loyalty = member & (rng.random(k) >= p.forgot_card_share)
        key = np.where(app, K_APP, np.where(web, cookie, np.where(loyalty, K_LOYALTY, K_CARD)))
        u, v = rng.random(k), rng.random(k)
        has_email = self.has_email[person]
        checkout = (app | web) & has_email & (u < p.checkout_link_share)
        guest = store & ~member & (u < p.guest_card_share)
        receipt = store & ~guest & has_email & (v < p.ereceipt_share)
        phone = store & loyalty & self.has_phone[person] & (v >= 1.0 - p.phone_at_till_share)
        link = np.where(
            checkout | receipt,
            K_EMAIL,
            np.where(phone, K_PHONE, np.where(guest, _GUEST + self.home_store[person], _NONE)),
        )
        s = p.amount_sigma
        amount = np.round(self.value[person] * np.exp(rng.normal(-s * s / 2.0, s, k)), 2)
        amount = np.maximum(amount, 0.5)
        self.log.add(
            person,
            t,
            channel,
            _ET["purchase"],
            key,
            link,
            action,
            amount,
            self._category(person),
        )

    # the campaign sweep ---------------------------------------------------------------------------

    def _organic_rate_integral(
        self, person: np.ndarray, t0: np.ndarray, t1: np.ndarray
    ) -> np.ndarray:
        """Expected organic purchases of each person in (t0, t1] (days since the start)."""
        a = np.maximum(t0, self.signup_t[person]) + self.spec.start_epoch
        b = t1 + self.spec.start_epoch
        out = _rate_integral(self.lam[person], self.online[person], self.pref_hour[person], a, b)
        return np.where(a < b, out, 0.0)

    def _offer_term(self, offer: str, person: np.ndarray, lapsed: np.ndarray) -> np.ndarray:
        """Logit shift of an offer's appeal to each person (also scales its treatment effect)."""
        if offer == "discount":
            return self.p.discount_match * self.discount_aff[person]
        if offer == "new_arrivals":
            return -0.2 * self.discount_aff[person] - 0.15 * self.za[person]
        if offer == "loyalty_points":
            return np.array([-0.4, 0.2, 0.4])[self.tier[person]]
        if offer == "catalog":
            return 0.2 * self.za[person]
        return 0.4 * lapsed.astype(float)  # winback

    def _truth_at(
        self, action: Action, person: np.ndarray, t: np.ndarray, fatigue: np.ndarray
    ) -> dict[str, np.ndarray]:
        """True response and purchase probabilities of contacting `person` at t with `action`."""
        p, c = self.p, action.channel
        lapsed = t - self.last_purchase[person] > p.lapsed_days
        m = np.exp(-self.fatigue_sens[person] * fatigue)
        offer = self._offer_term(action.offer, person, lapsed)
        lin = self.aff[c][person] + offer
        p_resp = p.delivery_rate[c] * _sigmoid(p.response_base[c] + lin) * m
        p0 = -np.expm1(-self._organic_rate_integral(person, t, t + p.horizon_days))
        channel_factor = p.uplift_scale[c] * 2.0 * _sigmoid(self.aff[c][person])
        gain_per_persuadability = channel_factor * np.exp(offer) * m
        tau = (
            self.persuadability[person] * gain_per_persuadability
            - self.dog[person] * p.intrusiveness[c]
        )
        p1 = self._treated(p0, tau)
        return {
            "p_response": p_resp,
            "p_purchase_treated": p1,
            "p_purchase_control": p0,
            "gain_per_persuadability": gain_per_persuadability,
            "expected_value": self.value[person],
            "lin": lin,
            "m": m,
            "lapsed": lapsed,
        }

    def _mean_incremental(self, action: Action, person: np.ndarray, truth: dict) -> np.ndarray:
        """The true effect averaged over the uplift-type draw, given every other latent.

        The best any model could know: the type itself is a random draw from the latents. The
        strengths' mean is exp(-0.18 + 0.6^2 / 2) = 1, so each type's mean effect uses strength 1.
        """
        probs, p0 = self.type_probs[person], truth["p_purchase_control"]
        persuaded = self._treated(p0, truth["gain_per_persuadability"]) - p0
        dogged = self._treated(p0, -self.p.intrusiveness[action.channel]) - p0
        return probs[:, 0] * persuaded + probs[:, 3] * dogged

    @staticmethod
    def _treated(p0: np.ndarray, tau: np.ndarray | float) -> np.ndarray:
        """P(purchase | contacted): p0 + tau, kept inside (0, 1) without crossing p0."""
        return np.clip(p0 + tau, np.minimum(p0, 0.001), np.maximum(p0, 0.999))

    def _fatigue_at(self, person: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Exponentially decayed count of the person's recent contacts at time t."""
        decay = np.exp(
            -(t - self.fatigue_t[person]) * math.log(2.0) / self.p.fatigue_half_life_days
        )
        return self.fatigue[person] * decay

    def _advance(self, now: float, revoke_until: float) -> None:
        """Apply every state change that happened up to `now` (the start of a wave)."""
        hi = np.searchsorted(self.op_time_sorted, now, side="right")
        idx = self.op_by_time[self.op_cursor : hi]
        idx = idx[self.op_alive[idx]]
        np.maximum.at(self.last_purchase, self.op_person[idx], self.op_t[idx])
        self.op_cursor = hi
        self.pending_purchase.apply_max(self.last_purchase, now)
        for c in OUTBOUND:
            self.pending_engagement[c].apply_max(self.last_engagement[c], now)
            self.pending_consent[c].apply_consent(self.consent[c], now, revoke_until)

    def _sweep(self) -> None:
        """Campaign waves in time order: eligibility, logging policy, responses, effects."""
        rng, n = self.rng, self.n
        self.fatigue = np.zeros(n)
        self.fatigue_t = np.zeros(n)
        # what the company knows of the purchase before the history: time since the last one
        before = -rng.exponential(365.0 / self.lam)
        self.last_purchase = np.where(self.existing & (before > self.signup_t), before, -np.inf)
        self.last_engagement = {c: np.full(n, -np.inf) for c in OUTBOUND}
        self.pending_purchase = _Pending()
        self.pending_engagement = {c: _Pending() for c in OUTBOUND}
        self.pending_consent = {c: _Pending() for c in OUTBOUND}
        self.induced: list[tuple[np.ndarray, ...]] = []

        for when, ai in zip(self.spec.wave_time, self.spec.wave_action, strict=True):
            action = ACTIONS[ai]
            c = action.channel
            spread = action.spread_hours / 24.0
            self._advance(when, when + spread)
            eligible = np.flatnonzero(
                self.consent[c] & (self.consent_from[c] < when) & (self.signup_t < when)
            )
            if len(eligible) == 0:
                continue
            self._wave(action, ai, when, spread, eligible)
        self._advance(self.D, self.D)

    def _wave(
        self, action: Action, ai: int, when: float, spread: float, eligible: np.ndarray
    ) -> None:
        """One wave: the logging policy picks, a random tenth is held out, the rest contacted."""
        rng, p = self.rng, self.p
        c = action.channel
        ch = _CH[c]
        lo, hi = p.propensity_bounds
        recent_p = (when - self.last_purchase[eligible]) <= p.recent_days
        recent_e = (when - self.last_engagement[c][eligible]) <= p.recent_days
        logit = (
            p.policy_alpha[action.action_id]
            + p.policy_recent_purchase * recent_p
            + p.policy_recent_engagement * recent_e
            + p.policy_tier * self.tier[eligible]
        )
        if action.offer == "winback":
            lapsed = (when - self.last_purchase[eligible]) > p.lapsed_days
            logit = logit + p.policy_lapsed * lapsed - 2.0 * p.policy_recent_purchase * recent_p
        pi = np.clip(_sigmoid(logit), lo, hi)
        chosen = rng.random(len(eligible)) < pi
        person, pi = eligible[chosen], pi[chosen]
        if len(person) == 0:
            return
        hold = rng.random(len(person)) < p.holdout_share
        t = when + rng.random(len(person)) * spread
        fatigue = self._fatigue_at(person, t)
        truth = self._truth_at(action, person, t, fatigue)
        key = _CHANNEL_KIND[c]
        propensity = np.where(hold, pi * p.holdout_share, pi * (1.0 - p.holdout_share))
        row = self.log.size + np.arange(len(person))
        self.log.add(
            person,
            t,
            ch,
            np.where(hold, _ET["holdout"], _ET["sent"]),
            key,
            action=ai,
            propensity=propensity,
        )
        self.contacts.append(
            {
                "row": row,
                "person": person,
                "t": t,
                "action": np.full(len(person), ai, dtype=np.int8),
                "treated": ~hold,
                "propensity": propensity,
                **{
                    k: truth[k]
                    for k in (
                        "p_response",
                        "p_purchase_treated",
                        "p_purchase_control",
                        "expected_value",
                    )
                },
            }
        )
        sent = ~hold
        s, ts = person[sent], t[sent]
        tr = {k: v[sent] for k, v in truth.items()}
        self.fatigue[s] = fatigue[sent] + 1.0
        self.fatigue_t[s] = ts
        responded, t_resp = self._responses(action, ai, s, ts, tr)
        self._opt_outs(c, ai, s, ts, t_resp, fatigue[sent])
        self._effects(ai, s, ts, tr, responded, t_resp)

    def _responses(
        self, action: Action, ai: int, s: np.ndarray, t: np.ndarray, tr: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Engagement events of sent contacts; returns who responded and a response-like time."""
        rng, p = self.rng, self.p
        c = action.channel
        ch, key, k = _CH[c], _CHANNEL_KIND[c], len(s)
        immediate = rng.random(k) < p.immediate_share[c]
        fast = t + rng.exponential(
            {"email": 1.0 * HOURS, "sms": 10 * MINUTES, "push": 15 * MINUTES}.get(c, 1 * MINUTES),
            k,
        )
        min_days, extra = (1.0, 1) if c == "direct_mail" else (0.02, 1 if c == "email" else 0)
        slow = _at_preferred_hour(rng, t, self.pref_hour[s], min_days, extra)
        # every response falls within the 3-day attribution window
        t_resp = np.minimum(np.where(immediate, fast, slow), t + 2.95)
        u1, u2 = rng.random(k), rng.random(k)
        base = _sigmoid(p.response_base[c] + tr["lin"]) * tr["m"]
        if c == "email":
            p_open = _sigmoid(p.email_open_base + tr["lin"]) * tr["m"]
            opened = u1 < p_open
            responded = opened & (u2 < base / p_open)
            t_click = t_resp + rng.exponential(3 * MINUTES, k)
            self.log.add(s[opened], t_resp[opened], ch, _ET["open"], key, action=ai)
            self.log.add(s[responded], t_click[responded], ch, _ET["click"], key, action=ai)
            # the click lands on the web site, on one of the person's cookies, tagged by the link
            lands = responded & (self.n_cookies[s] > 0)
            cookie = K_COOKIE0 + (rng.random(k) * self.n_cookies[s]).astype(np.int64)
            self.log.add(
                s[lands],
                t_click[lands] + 5 * SECONDS,
                _CH["web"],
                _ET["visit"],
                cookie[lands],
                K_EMAIL,
            )
            engaged = opened
        elif c in ("sms", "push"):
            delivered = u1 < p.delivery_rate[c]
            t_deliv = t + rng.exponential(0.5 * MINUTES, k)
            t_resp = np.maximum(t_resp, t_deliv + SECONDS)
            responded = delivered & (u2 < base)
            self.log.add(s[delivered], t_deliv[delivered], ch, _ET["delivered"], key, action=ai)
            kind = _ET["click"] if c == "sms" else _ET["open"]
            self.log.add(s[responded], t_resp[responded], ch, kind, key, action=ai)
            engaged = responded
        else:
            responded = u1 < base
            kind = _ET["visit"] if c == "direct_mail" else _ET["call"]
            self.log.add(s[responded], t_resp[responded], ch, kind, key, action=ai)
            engaged = responded
        self.pending_engagement[c].add(s[engaged], t_resp[engaged])
        return responded, t_resp

    def _opt_outs(
        self,
        c: str,
        ai: int,
        s: np.ndarray,
        t: np.ndarray,
        t_resp: np.ndarray,
        fatigue: np.ndarray,
    ) -> None:
        """Unsubscribes and complaints (each followed by a consent revocation), rare re-grants."""
        rng, p = self.rng, self.p
        k = len(s)
        lift = (1.0 + p.unsubscribe_fatigue * fatigue) * (
            1.0 + p.unsubscribe_sleeping_dog * self.dog[s]
        )
        p_unsub = p.unsubscribe_rate[c] * lift
        p_complaint = p.complaint_rate[c] * lift
        u = rng.random(k)
        unsub = u < p_unsub
        complaint = ~unsub & (u < p_unsub + p_complaint)
        t_out = t_resp + rng.exponential(2 * MINUTES, k)
        ch, key = _CH[c], _CHANNEL_KIND[c]
        self.log.add(s[unsub], t_out[unsub], ch, _ET["unsubscribe"], key, action=ai)
        self.log.add(s[complaint], t_out[complaint], ch, _ET["complaint"], key, action=ai)
        out = unsub | complaint
        who, t_revoke = s[out], t_out[out] + SECONDS
        self.log.add(who, t_revoke, ch, _ET["consent_revoked"], key)
        self.pending_consent[c].add(who, t_revoke, False)
        again = rng.random(len(who)) < p.regrant_prob
        t_again = t_revoke[again] + rng.exponential(p.regrant_delay_days, int(again.sum()))
        self.log.add(who[again], t_again, ch, _ET["consent_granted"], key)
        self.pending_consent[c].add(who[again], t_again, True)

    def _effects(
        self,
        ai: int,
        s: np.ndarray,
        t: np.ndarray,
        tr: dict[str, np.ndarray],
        responded: np.ndarray,
        t_resp: np.ndarray,
    ) -> None:
        """Realise p1: an induced purchase if p1 > p0, deleted organic purchases if p1 < p0."""
        rng, p = self.rng, self.p
        H = p.horizon_days
        p0, p1, r = tr["p_purchase_control"], tr["p_purchase_treated"], tr["p_response"]
        k = len(s)
        u = rng.random(k)
        # induced: probability q = (p1 - p0) / (1 - p0) in total, K times likelier for responders
        q = np.where(p1 > p0, (p1 - p0) / (1.0 - p0), 0.0)
        K = p.induced_response_lift
        q_resp = np.minimum(1.0, q * K / (r * K + 1.0 - r))
        q_other = np.clip((q - r * q_resp) / (1.0 - r), 0.0, 1.0)
        induced = u < np.where(responded, q_resp, q_other)
        online = rng.random(k) < self.online[s]
        t_buy = np.where(responded, t_resp + rng.exponential(0.3, k), t + rng.random(k) * H)
        # store purchases fall in opening hours: the same day, else the next
        in_store = np.floor(t_buy) + rng.uniform(*STORE_HOURS, k) / 24.0
        in_store = np.where(in_store <= t, in_store + 1.0, in_store)
        t_buy = np.clip(np.where(online, t_buy, in_store), t + SECONDS, t + H - SECONDS)
        if induced.any():
            who, when = s[induced], t_buy[induced]
            self.induced.append((who, when, online[induced], np.full(len(who), ai, dtype=np.int8)))
            self.pending_purchase.add(who, when)
        # deleted: all organic purchases in (t, t + H] with probability (p0 - p1) / p0
        d = np.where(p1 < p0, (p0 - p1) / np.maximum(p0, 1e-12), 0.0)
        deleted = rng.random(k) < d
        if deleted.any():
            who, start = s[deleted], t[deleted]
            lo = np.searchsorted(self.op_key, who * self.op_span + start, side="right")
            hi = np.searchsorted(self.op_key, who * self.op_span + start + H, side="right")
            self.op_alive[_ranges(lo, hi)] = False

    # truth at the end and output ------------------------------------------------------------------

    def run(self) -> dict[str, int]:
        """Simulate the chunk's history and write its part files; returns the counts."""
        self._organic_purchases()
        self._organic_visits()
        self._consent_events()
        self._sweep()
        alive = self.op_alive
        self._log_purchases(self.op_person[alive], self.op_t[alive], self.op_online[alive], _NONE)
        if self.induced:
            who, when, online, act = (np.concatenate(x) for x in zip(*self.induced, strict=True))
            self._log_purchases(who, when, online, act)
        return self._write()

    def _consent_events(self) -> None:
        """Initial consent grants: at the start for existing customers, else at signup."""
        for c in OUTBOUND:
            who = np.flatnonzero(self.consent[c] & (self.consent_from[c] < self.D))
            link = K_CRM if c in ("email", "sms", "call_centre") else _NONE
            self.log.add(
                who,
                self.consent_from[c][who],
                _CH[c],
                _ET["consent_granted"],
                _CHANNEL_KIND[c],
                link,
            )

    def _write(self) -> dict[str, int]:
        """Encode the chunk's events and truth and write its part files."""
        spec, n = self.spec, self.n
        cols = self.log.columns()
        ts_us = ts_us_of(spec, cols[1])
        # the history ends at D: later responses and purchases are cut off
        kept = np.flatnonzero(cols[1] < self.D)
        order = kept[np.argsort(ts_us[kept], kind="stable")]
        position = np.full(len(ts_us), -1, dtype=np.int64)  # an event's rank = its event_id
        position[order] = np.arange(len(order))
        rows, seq, bad_at, bad_kind = self._dirty(order, position, ts_us, cols[3])
        cols = [c[rows] for c in cols]
        ts_us = ts_us[rows]
        cols[2][bad_at[bad_kind == 0]] = _BAD_CHANNEL
        cols[4][bad_at[bad_kind == 1]] = _NOKEY
        cols[7][bad_at[bad_kind == 2]] *= -1.0
        cols[9][bad_at[bad_kind == 3]] = 1.5
        event_ids = _hex_strings("", (np.int64(spec.chunk) << np.int64(40)) | seq)
        files = [self._write_events(cols, ts_us, event_ids)]
        del cols, event_ids
        files.append(self._write_customers())
        files.append(self._write_truth_customers())
        identity_rows, f = self._write_identity()
        files.append(f)
        contacts = self._contact_columns()
        contact_seq = position[contacts["row"]]
        by_time = np.argsort(contact_seq, kind="stable")
        contacts = {k: v[by_time] for k, v in contacts.items()}
        contact_ids = _hex_strings(
            "", (np.int64(spec.chunk) << np.int64(40)) | contact_seq[by_time]
        )
        files.append(self._write_contacts(contacts, ts_us_of(spec, contacts["t"]), contact_ids))
        files.append(self._write_customer_actions())
        return {
            "customers": n,
            "identifiers": identity_rows,
            "events": len(ts_us),
            "contacts": len(contact_seq),
            "files": len(files),
            "dirty_rows": len(rows) - len(order),
        }

    def _contact_columns(self) -> dict[str, np.ndarray]:
        """The contacts of all waves as columns (empty ones when no wave reached anybody)."""
        if self.contacts:
            return {k: np.concatenate([c[k] for c in self.contacts]) for k in self.contacts[0]}
        ints = ("row", "person", "action")
        columns = {k: np.zeros(0, dtype=np.int64) for k in ints}
        columns["treated"] = np.zeros(0, dtype=bool)
        floats = ("t", "propensity", "p_response", "p_purchase_treated", "p_purchase_control")
        return columns | {k: np.zeros(0) for k in (*floats, "expected_value")}

    def _dirty(
        self, order: np.ndarray, position: np.ndarray, ts_us: np.ndarray, etype: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows to write, with retried duplicates (same event_id) and malformed rows inserted.

        Returns the source row of each output row, its event sequence number, and the output
        positions and kinds (0 unknown channel, 1 bad key, 2 negative amount, 3 propensity 1.5)
        of the malformed rows.
        """
        rate, valid = self.spec.dirty_rate, len(order)
        empty = np.zeros(0, dtype=np.int64)
        if rate <= 0 or valid == 0:
            return order, np.arange(valid), empty, empty
        rng = self.rng
        dup = order[rng.choice(valid, rng.binomial(valid, rate))]
        n_bad = math.ceil(valid * rate / 5.0)
        kind = np.arange(n_bad) % 4
        bad = order[rng.choice(valid, n_bad)]
        for k, event_type in ((2, "purchase"), (3, "sent")):
            candidates = order[etype[order] == _ET[event_type]]
            if len(candidates):
                bad = np.where(kind == k, rng.choice(candidates, n_bad), bad)
            else:
                kind = np.where(kind == k, 0, kind)
        extra = np.concatenate([dup, bad])
        extra_seq = np.concatenate([position[dup], valid + np.arange(n_bad)])
        extra_kind = np.concatenate([np.full(len(dup), -1), kind])
        by_time = np.argsort(ts_us[extra], kind="stable")
        extra, extra_seq, extra_kind = extra[by_time], extra_seq[by_time], extra_kind[by_time]
        # retries and malformed rows go right after the valid rows of the same time
        at = np.searchsorted(ts_us[order], ts_us[extra], side="right")
        rows = np.insert(order, at, extra)
        seq = np.insert(np.arange(valid), at, extra_seq)
        placed = at + np.arange(len(extra))
        return rows, seq, placed[extra_kind >= 0], extra_kind[extra_kind >= 0]

    def _key_strings(self, kind: np.ndarray, person: np.ndarray) -> pa.Array:
        """Key strings of (identifier kind, person) codes; kind -1 gives null."""
        n = self.n
        kind = kind.astype(np.int64)
        owner = np.where(kind == K_APP, self.app_owner[person], person)
        idx = kind * n + owner
        idx = np.where(kind >= _GUEST, _N_KINDS * n + kind - _GUEST, idx)
        idx = np.where(kind == _NOKEY, _N_KINDS * n + self.p.guest_cards, idx)
        indices = pa.array(idx, mask=kind == _NONE) if (kind == _NONE).any() else pa.array(idx)
        return pc.take(self.key_dictionary, indices)

    def _write_events(self, cols: list[np.ndarray], ts_us: np.ndarray, ids: pa.Array) -> Path:
        """The contract's events table from the code columns."""
        person, _, channel, etype, key, link, action, amount, category, propensity = cols
        table = pa.Table.from_arrays(
            [
                ids,
                pa.array(ts_us, type=pa.timestamp("us", tz="UTC")),
                self._key_strings(key, person),
                self._key_strings(link, person),
                _decode(channel, (*CHANNELS, "fax")),
                _decode(etype, EVENT_TYPES),
                _decode(action, [a.action_id for a in ACTIONS]),
                pa.array(amount, from_pandas=True),
                _decode(category, CATEGORIES),
                pa.array(propensity, from_pandas=True),
            ],
            schema=EVENT_SCHEMA,
        )
        return self._write_table(table, "events")

    def _write_table(self, table: pa.Table, name: str) -> Path:
        """Write the chunk's part file of table `name`."""
        path = self.spec.out / name / f"part-{self.spec.chunk:05d}.parquet"
        pq.write_table(table, path)
        return path

    def _person_id(self, local: np.ndarray | None = None) -> np.ndarray:
        """Global person ids of local indices (all persons of the chunk by default)."""
        local = np.arange(self.n) if local is None else local
        return (self.spec.first_person + local).astype(np.int64)

    def _write_customers(self) -> Path:
        """The observable customers table, keyed by the crm key."""
        signup_date = np.floor(self.spec.start_epoch + self.signup_t).astype(np.int32)
        table = pa.table(
            {
                CUSTOMER_KEY: self.key_dictionary.slice(0, self.n),
                "age": pa.array(self.age),
                "region": _decode(self.region, REGIONS),
                "loyalty_tier": _decode(self.tier, TIERS),
                "signup_date": pa.array(signup_date, type=pa.date32()),
                "signup_channel": _decode(self.signup_channel, SIGNUP_CHANNELS),
            }
        )
        return self._write_table(table, "customers")

    def _write_truth_customers(self) -> Path:
        """Every person's profile and latents, keyed by person_id."""
        columns: dict[str, object] = {
            "person_id": self._person_id(),
            "crm_key": self.key_dictionary.slice(0, self.n),
            "signup_ts": pa.array(
                ts_us_of(self.spec, self.signup_t), type=pa.timestamp("us", tz="UTC")
            ),
            "existing_customer": self.existing,
            "age": self.age,
            "region": _decode(self.region, REGIONS),
            "loyalty_tier": _decode(self.tier, TIERS),
            "signup_channel": _decode(self.signup_channel, SIGNUP_CHANNELS),
            **{f"affinity_{c}": self.aff[c] for c in OUTBOUND},
            "responsiveness": self.general,
            "purchase_intensity": self.lam,
            "mean_order_value": self.value,
            "fatigue_sensitivity": self.fatigue_sens,
            "persuadability": self.persuadability,
            "sleeping_dog_strength": self.dog,
            "discount_affinity": self.discount_aff,
            "online_share": self.online,
            "preferred_hour": self.pref_hour,
            **{f"category_pref_{c}": self.cat_pref[:, i] for i, c in enumerate(CATEGORIES)},
            "uplift_type": _decode(self.uplift_type, UPLIFT_TYPES),
            "has_email": self.has_email,
            "has_phone": self.has_phone,
            "app_user": self.app_user,
            "web_cookies": self.n_cookies,
            "loyalty_join_ts": pa.array(
                ts_us_of(self.spec, np.where(self.member, self.join_t, 0.0)),
                mask=~self.member,
                type=pa.timestamp("us", tz="UTC"),
            ),
        }
        table = pa.table(
            {k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in columns.items()}
        )
        return self._write_table(table, "truth/customers")

    def _write_identity(self) -> tuple[int, Path]:
        """Identifier -> person; the guest cards (no person) are written by chunk 0."""
        n = self.n
        roles = (
            "crm",
            "email",
            "phone",
            "loyalty",
            "card",
            "web_cookie",
            "web_cookie",
            "app_device",
        )
        idx, person, kinds = [], [], []
        for kind in range(_N_KINDS):
            who = np.flatnonzero(self.has_kind[kind])
            idx.append(kind * n + who)
            person.append(who)
            kinds.append(np.full(len(who), kind))
        # the family tablet's second user
        idx.append(K_APP * n + self.tablet_a)
        person.append(self.tablet_b)
        kinds.append(np.full(len(self.tablet_b), K_APP))
        idx, person, kinds = np.concatenate(idx), np.concatenate(person), np.concatenate(kinds)
        shared = (kinds == K_APP) & np.isin(idx, K_APP * n + self.tablet_a)
        table = pa.table(
            {
                "identifier": pc.take(self.key_dictionary, pa.array(idx)),
                "person_id": pa.array(self._person_id(person)),
                "identifier_type": _decode(kinds, _KIND_TYPE),
                "role": _decode(kinds, roles),
                "shared": pa.array(shared),
            }
        )
        if self.spec.chunk == 0:
            g = self.p.guest_cards
            guests = pa.table(
                {
                    "identifier": self.key_dictionary.slice(_N_KINDS * n, g),
                    "person_id": pa.nulls(g, pa.int64()),
                    "identifier_type": pa.array(["loyalty"] * g),
                    "role": pa.array(["guest_card"] * g),
                    "shared": pa.array([True] * g),
                }
            )
            table = pa.concat_tables([table, guests])
        return table.num_rows, self._write_table(table, "truth/identity")

    def _write_contacts(self, c: dict[str, np.ndarray], ts_us: np.ndarray, ids: pa.Array) -> Path:
        """Truth of every sent and holdout event, in time order."""
        action = c["action"]
        table = pa.table(
            {
                EVENT_ID: ids,
                "person_id": self._person_id(c["person"]),
                TS: pa.array(ts_us, type=pa.timestamp("us", tz="UTC")),
                ACTION_ID: _decode(action, [a.action_id for a in ACTIONS]),
                CHANNEL: _decode(action, [a.channel for a in ACTIONS]),
                "offer": _decode(action, [a.offer for a in ACTIONS]),
                "treated": c["treated"],
                PROPENSITY: c["propensity"],
                "p_response": c["p_response"],
                "p_purchase_treated": c["p_purchase_treated"],
                "p_purchase_control": c["p_purchase_control"],
                "expected_value": c["expected_value"],
            }
        )
        return self._write_table(table, "truth/contacts")

    def _write_customer_actions(self) -> Path:
        """Truth per person x action if contacted at the end of the history."""
        n = self.n
        person = np.arange(n)
        t = np.full(n, self.D)
        fatigue = self._fatigue_at(person, t)
        parts = []
        for ai, action in enumerate(ACTIONS):
            c = action.channel
            truth = self._truth_at(action, person, t, fatigue)
            eligible = self.consent[c] & (self.consent_from[c] < self.D) & (self.signup_t < self.D)
            code = np.full(n, ai)
            parts.append(
                pa.table(
                    {
                        "person_id": self._person_id(),
                        ACTION_ID: _decode(code, [a.action_id for a in ACTIONS]),
                        CHANNEL: _decode(code, [a.channel for a in ACTIONS]),
                        "offer": _decode(code, [a.offer for a in ACTIONS]),
                        "eligible": eligible,
                        "p_response": truth["p_response"],
                        "p_purchase_treated": truth["p_purchase_treated"],
                        "p_purchase_control": truth["p_purchase_control"],
                        "incremental": truth["p_purchase_treated"] - truth["p_purchase_control"],
                        "mean_incremental_given_latents": self._mean_incremental(
                            action, person, truth
                        ),
                        "expected_value": truth["expected_value"],
                    }
                )
            )
        return self._write_table(pa.concat_tables(parts), "truth/customer_actions")


def ts_us_of(spec: _ChunkSpec, t: np.ndarray) -> np.ndarray:
    """Days since the start as UTC microseconds since the epoch."""
    return spec.start_epoch * US_PER_DAY + np.round(t * US_PER_DAY).astype(np.int64)


def _decode(codes: np.ndarray, vocabulary: tuple[str, ...] | list[str]) -> pa.Array:
    """Strings of small integer codes; negative codes give null."""
    codes = np.asarray(codes, dtype=np.int64)
    missing = codes < 0
    indices = (
        pa.array(np.where(missing, 0, codes), mask=missing) if missing.any() else pa.array(codes)
    )
    return pc.take(pa.array(list(vocabulary), type=pa.string()), indices)


def _run_chunk(spec: _ChunkSpec) -> dict[str, int]:
    """Worker entry point: one chunk from persons to part files."""
    return _Chunk(spec).run()


_SCHEDULE_STREAM = 2**32 - 1  # the schedule's random stream, apart from every chunk's


def campaign_schedule(seed: int, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Wave times (days since the start) and action indices, in time order; from the seed only."""
    rng = np.random.default_rng([seed, _SCHEDULE_STREAM])
    phase = {c: int(rng.integers(0, 7)) for c in OUTBOUND}
    times, actions = [], []
    for i, a in enumerate(ACTIONS):
        day = np.arange(phase[a.channel] + a.phase_days, days, a.cadence_days)
        if a.channel == "direct_mail":  # letter drops move by a few days around print schedules
            day = np.clip(day + rng.integers(-3, 4, len(day)), 0, days - 1)
        times.append(day + a.send_hour / 24.0)
        actions.append(np.full(len(day), i))
    t, a = np.concatenate(times), np.concatenate(actions)
    order = np.lexsort((a, t))
    return t[order], a[order]


def _prepare(out: Path) -> None:
    """Create the output folders; remove part files a previous world left there."""
    for name in (
        "events",
        "customers",
        "truth/identity",
        "truth/customers",
        "truth/contacts",
        "truth/customer_actions",
    ):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("part-*.parquet"):
            old.unlink()


def generate_world(
    out: Path,
    customers: int,
    days: int = 365,
    seed: int = 0,
    start: date = date(2025, 1, 1),
    workers: int = 2,
    dirty_rate: float = 0.0005,
    progress: bool = True,
    params: WorldParams | None = None,
) -> WorldSummary:
    """Write a synthetic world of `customers` persons over `days` days into `out`.

    The same seed and parameters give the same files whatever `workers` is.
    """
    if customers < 1:
        raise ValueError(f"customers must be at least 1, got {customers}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not 0.0 <= dirty_rate <= 0.1:
        raise ValueError(f"dirty_rate must be within [0, 0.1], got {dirty_rate}")
    began = time.perf_counter()
    params = params or WorldParams()
    out = Path(out)
    _prepare(out)
    if isinstance(start, datetime):
        start = start.date()
    start_epoch = (start - date(1970, 1, 1)).days
    wave_time, wave_action = campaign_schedule(seed, days)
    size = params.chunk_size
    specs = [
        _ChunkSpec(
            out=out,
            seed=seed,
            chunk=i,
            first_person=i * size,
            n=min(size, customers - i * size),
            days=days,
            start_epoch=start_epoch,
            params=params,
            wave_time=wave_time,
            wave_action=wave_action,
            dirty_rate=dirty_rate,
        )
        for i in range(math.ceil(customers / size))
    ]
    totals = {
        "customers": 0,
        "identifiers": 0,
        "events": 0,
        "contacts": 0,
        "files": 0,
        "dirty_rows": 0,
    }
    bar = tqdm(total=customers, unit="customer", disable=not progress, desc="synth")
    with bar:
        if workers <= 1 or len(specs) == 1:
            for spec in specs:
                _add(totals, _run_chunk(spec))
                bar.update(spec.n)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=min(workers, len(specs)), mp_context=context
            ) as pool:
                futures = {pool.submit(_run_chunk, spec): spec for spec in specs}
                for future in as_completed(futures):
                    _add(totals, future.result())
                    bar.update(futures[future].n)
    _write_world_json(out, seed, customers, days, start, params, dirty_rate, wave_time, wave_action)
    totals["files"] += 1
    return WorldSummary(seconds=time.perf_counter() - began, **totals)


def _add(totals: dict[str, int], counts: dict[str, int]) -> None:
    """Add a chunk's counts to the totals."""
    for k, v in counts.items():
        totals[k] += v


def _write_world_json(
    out: Path,
    seed: int,
    customers: int,
    days: int,
    start: date,
    params: WorldParams,
    dirty_rate: float,
    wave_time: np.ndarray,
    wave_action: np.ndarray,
) -> None:
    """truth/world.json: how the world was made (seed, parameters, catalogue, schedule)."""
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    waves = [
        {
            "ts": (begin + timedelta(days=float(t))).isoformat(),
            "action_id": ACTIONS[a].action_id,
        }
        for t, a in zip(wave_time, wave_action, strict=True)
    ]
    world = {
        "generator": "features.synth",
        "seed": seed,
        "customers": customers,
        "days": days,
        "start": start.isoformat(),
        "end": (start + timedelta(days=days)).isoformat(),
        "horizon_days": params.horizon_days,
        "dirty_rate": dirty_rate,
        "params": asdict(params),
        "actions": actions_catalogue(),
        "waves": waves,
        "seasonality": seasonality_definition(),
        "categories": list(CATEGORIES),
        "uplift_types": list(UPLIFT_TYPES),
        "truth_tables": {
            "identity": "identifier -> person_id, identifier_type, role, shared",
            "customers": "person_id, crm_key, signup_ts, profile and every latent",
            "contacts": "per sent/holdout event: treated, propensity, p_response, "
            "p_purchase_treated, p_purchase_control, expected_value",
            "customer_actions": "per person x action if contacted at the end of the history "
            "(incremental, and its mean over the uplift-type draw given the other latents)",
        },
    }
    (out / "truth" / "world.json").write_text(json.dumps(world, indent=2))


def _logit(x: float) -> float:
    """Inverse of the logistic function."""
    return math.log(x / (1.0 - x))
