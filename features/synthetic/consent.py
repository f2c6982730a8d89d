"""Consent: the initial grants and the unsubscribes that revoke them for later waves."""

from __future__ import annotations

import numpy as np

from features.synthetic.vocabulary import (
    CHANNEL_CODE,
    CHANNEL_KIND,
    EVENT_CODE,
    K_CRM,
    MINUTES,
    NONE,
    OUTBOUND,
    SECONDS,
)


class Consent:
    """A chunk's consent grants and opt-outs (methods of `world._Chunk`, which holds the state)."""

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
        ch, key = CHANNEL_CODE[c], CHANNEL_KIND[c]
        self.log.add(s[unsub], t_out[unsub], ch, EVENT_CODE["unsubscribe"], key, action=ai)
        self.log.add(s[complaint], t_out[complaint], ch, EVENT_CODE["complaint"], key, action=ai)
        out = unsub | complaint
        who, t_revoke = s[out], t_out[out] + SECONDS
        self.log.add(who, t_revoke, ch, EVENT_CODE["consent_revoked"], key)
        self.pending_consent[c].add(who, t_revoke, False)
        again = rng.random(len(who)) < p.regrant_prob
        t_again = t_revoke[again] + rng.exponential(p.regrant_delay_days, int(again.sum()))
        self.log.add(who[again], t_again, ch, EVENT_CODE["consent_granted"], key)
        self.pending_consent[c].add(who[again], t_again, True)

    def _consent_events(self) -> None:
        """Initial consent grants: at the start for existing customers, else at signup."""
        for c in OUTBOUND:
            who = np.flatnonzero(self.consent[c] & (self.consent_from[c] < self.D))
            link = K_CRM if c in ("email", "sms", "call_centre") else NONE
            self.log.add(
                who,
                self.consent_from[c][who],
                CHANNEL_CODE[c],
                EVENT_CODE["consent_granted"],
                CHANNEL_KIND[c],
                link,
            )
