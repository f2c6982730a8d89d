"""Responses to contacts: fatigue, offer match, responses and each contact's effect on buying."""

from __future__ import annotations

import math

import numpy as np

from features.synthetic.campaigns import Action
from features.synthetic.draws import at_preferred_hour, ranges, sigmoid
from features.synthetic.purchases import STORE_HOURS
from features.synthetic.vocabulary import (
    CHANNEL_CODE,
    CHANNEL_KIND,
    EVENT_CODE,
    HOURS,
    K_COOKIE0,
    K_EMAIL,
    MINUTES,
    SECONDS,
)


class Responses:
    """A chunk's responses and their effects (methods of `world._Chunk`, which holds the state)."""

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

    def _responses(
        self, action: Action, ai: int, s: np.ndarray, t: np.ndarray, tr: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Engagement events of sent contacts; returns who responded and a response-like time."""
        rng, p = self.rng, self.p
        c = action.channel
        ch, key, k = CHANNEL_CODE[c], CHANNEL_KIND[c], len(s)
        immediate = rng.random(k) < p.immediate_share[c]
        fast = t + rng.exponential(
            {"email": 1.0 * HOURS, "sms": 10 * MINUTES, "push": 15 * MINUTES}.get(c, 1 * MINUTES),
            k,
        )
        min_days, extra = (1.0, 1) if c == "direct_mail" else (0.02, 1 if c == "email" else 0)
        slow = at_preferred_hour(rng, t, self.pref_hour[s], min_days, extra)
        # every response falls within the 3-day attribution window
        t_resp = np.minimum(np.where(immediate, fast, slow), t + 2.95)
        u1, u2 = rng.random(k), rng.random(k)
        base = sigmoid(p.response_base[c] + tr["lin"]) * tr["m"]
        if c == "email":
            p_open = sigmoid(p.email_open_base + tr["lin"]) * tr["m"]
            opened = u1 < p_open
            responded = opened & (u2 < base / p_open)
            t_click = t_resp + rng.exponential(3 * MINUTES, k)
            self.log.add(s[opened], t_resp[opened], ch, EVENT_CODE["open"], key, action=ai)
            self.log.add(s[responded], t_click[responded], ch, EVENT_CODE["click"], key, action=ai)
            # the click lands on the web site, on one of the person's cookies, tagged by the link
            lands = responded & (self.n_cookies[s] > 0)
            cookie = K_COOKIE0 + (rng.random(k) * self.n_cookies[s]).astype(np.int64)
            self.log.add(
                s[lands],
                t_click[lands] + 5 * SECONDS,
                CHANNEL_CODE["web"],
                EVENT_CODE["visit"],
                cookie[lands],
                K_EMAIL,
            )
            engaged = opened
        elif c in ("sms", "push"):
            delivered = u1 < p.delivery_rate[c]
            t_deliv = t + rng.exponential(0.5 * MINUTES, k)
            t_resp = np.maximum(t_resp, t_deliv + SECONDS)
            responded = delivered & (u2 < base)
            self.log.add(
                s[delivered], t_deliv[delivered], ch, EVENT_CODE["delivered"], key, action=ai
            )
            kind = EVENT_CODE["click"] if c == "sms" else EVENT_CODE["open"]
            self.log.add(s[responded], t_resp[responded], ch, kind, key, action=ai)
            engaged = responded
        else:
            responded = u1 < base
            kind = EVENT_CODE["visit"] if c == "direct_mail" else EVENT_CODE["call"]
            self.log.add(s[responded], t_resp[responded], ch, kind, key, action=ai)
            engaged = responded
        self.pending_engagement[c].add(s[engaged], t_resp[engaged])
        return responded, t_resp

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
            self.op_alive[ranges(lo, hi)] = False
