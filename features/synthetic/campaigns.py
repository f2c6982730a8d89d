"""Outbound campaigns: the action catalogue, the wave schedule and each wave's logged contacts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from features.synthetic.draws import sigmoid
from features.synthetic.event_log import Pending
from features.synthetic.vocabulary import CHANNEL_CODE, CHANNEL_KIND, EVENT_CODE, OUTBOUND


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


def actions_catalogue() -> list[dict[str, object]]:
    """The world's actions as plain records (channel, offer, cost, schedule)."""
    return [asdict(a) for a in ACTIONS]


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


class Campaigns:
    """A chunk's campaign waves (methods of `world._Chunk`, which holds the state)."""

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
        self.pending_purchase = Pending()
        self.pending_engagement = {c: Pending() for c in OUTBOUND}
        self.pending_consent = {c: Pending() for c in OUTBOUND}
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
        ch = CHANNEL_CODE[c]
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
        pi = np.clip(sigmoid(logit), lo, hi)
        chosen = rng.random(len(eligible)) < pi
        person, pi = eligible[chosen], pi[chosen]
        if len(person) == 0:
            return
        hold = rng.random(len(person)) < p.holdout_share
        t = when + rng.random(len(person)) * spread
        fatigue = self._fatigue_at(person, t)
        truth = self._truth_at(action, person, t, fatigue)
        key = CHANNEL_KIND[c]
        propensity = np.where(hold, pi * p.holdout_share, pi * (1.0 - p.holdout_share))
        row = self.log.size + np.arange(len(person))
        self.log.add(
            person,
            t,
            ch,
            np.where(hold, EVENT_CODE["holdout"], EVENT_CODE["sent"]),
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
