"""Organic purchases and visits: seasonality, the hour-of-day profile and the purchase rate."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from features.synthetic.draws import logistic_scale, sigmoid, wrapped_hour
from features.synthetic.vocabulary import (
    CATEGORIES,
    CHANNEL_CODE,
    EVENT_CODE,
    GUEST,
    K_APP,
    K_CARD,
    K_COOKIE0,
    K_CRM,
    K_EMAIL,
    K_LOYALTY,
    K_PHONE,
    MINUTES,
    NONE,
    US_PER_DAY,
)

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


def _intraday_cdf(x: np.ndarray, online: np.ndarray, pref_hour: np.ndarray) -> np.ndarray:
    """Share of a day's purchase rate before fraction x of the day (mixture of the two profiles)."""
    mu = pref_hour / 24.0
    scale = logistic_scale(ONLINE_HOUR_SD)
    # wrapped logistic on [0, 1): the neighbouring periods k = -1, 0, 1 suffice for scale << 1
    wrapped = sum(sigmoid((x - mu + k) / scale) - sigmoid((k - mu) / scale) for k in (-1, 0, 1))
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


class Purchases:
    """A chunk's organic purchases and visits (methods of `world._Chunk`, which holds the state)."""

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
            wrapped_hour(rng, self.pref_hour[person], ONLINE_HOUR_SD),
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
        self.log.add(
            person,
            t,
            CHANNEL_CODE["web"],
            EVENT_CODE["visit"],
            cookie,
            np.where(login, K_EMAIL, NONE),
        )
        self._views(person, t, CHANNEL_CODE["web"], cookie)
        # app: a login at first use, then visits
        users = np.flatnonzero(self.app_user & (self.login_t < self.D))
        self.log.add(
            users, self.login_t[users], CHANNEL_CODE["app"], EVENT_CODE["visit"], K_APP, K_CRM
        )
        rate = np.where(self.app_user, p.app_visits_per_year * taste, 0.0)
        person, t, _ = self._sample_times(rate, self.install_t, None)
        self.log.add(person, t, CHANNEL_CODE["app"], EVENT_CODE["visit"], K_APP)
        self._views(person, t, CHANNEL_CODE["app"], K_APP)
        # loyalty registration at the till during the history
        joined = np.flatnonzero(self.member & (self.join_t >= 0.0))
        self.log.add(
            joined,
            self.join_t[joined],
            CHANNEL_CODE["store"],
            EVENT_CODE["visit"],
            K_LOYALTY,
            K_CRM,
        )

    def _views(
        self, person: np.ndarray, t: np.ndarray, channel: int, key: np.ndarray | int
    ) -> None:
        """Product views with a category after some of the visits."""
        rng = self.rng
        viewed = rng.random(len(person)) < self.p.view_share
        key = np.broadcast_to(key, person.shape)[viewed]
        person, t = person[viewed], t[viewed] + rng.random(viewed.sum()) * 10.0 * MINUTES
        self.log.add(person, t, channel, EVENT_CODE["view"], key, category=self._category(person))

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
        channel = np.where(
            app, CHANNEL_CODE["app"], np.where(web, CHANNEL_CODE["web"], CHANNEL_CODE["store"])
        )
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
            np.where(phone, K_PHONE, np.where(guest, GUEST + self.home_store[person], NONE)),
        )
        s = p.amount_sigma
        amount = np.round(self.value[person] * np.exp(rng.normal(-s * s / 2.0, s, k)), 2)
        amount = np.maximum(amount, 0.5)
        self.log.add(
            person,
            t,
            channel,
            EVENT_CODE["purchase"],
            key,
            link,
            action,
            amount,
            self._category(person),
        )

    def _organic_rate_integral(
        self, person: np.ndarray, t0: np.ndarray, t1: np.ndarray
    ) -> np.ndarray:
        """Expected organic purchases of each person in (t0, t1] (days since the start)."""
        a = np.maximum(t0, self.signup_t[person]) + self.spec.start_epoch
        b = t1 + self.spec.start_epoch
        out = _rate_integral(self.lam[person], self.online[person], self.pref_hour[person], a, b)
        return np.where(a < b, out, 0.0)
