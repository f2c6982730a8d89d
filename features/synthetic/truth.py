"""The truth behind the events: each contact's true probabilities and the truth tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.ingest.contract import (
    ACTION_ID,
    CHANNEL,
    EVENT_ID,
    PROPENSITY,
    TS,
)
from features.synthetic.campaigns import ACTIONS, Action
from features.synthetic.draws import decode, sigmoid, ts_us_of
from features.synthetic.vocabulary import (
    CATEGORIES,
    K_APP,
    KIND_TYPE,
    N_KINDS,
    OUTBOUND,
    REGIONS,
    SIGNUP_CHANNELS,
    TIERS,
    UPLIFT_TYPES,
)


class Truth:
    """A chunk's truth and its truth tables (methods of `world._Chunk`, which holds the state)."""

    def _truth_at(
        self, action: Action, person: np.ndarray, t: np.ndarray, fatigue: np.ndarray
    ) -> dict[str, np.ndarray]:
        """True response and purchase probabilities of contacting `person` at t with `action`."""
        p, c = self.p, action.channel
        lapsed = t - self.last_purchase[person] > p.lapsed_days
        m = np.exp(-self.fatigue_sens[person] * fatigue)
        offer = self._offer_term(action.offer, person, lapsed)
        lin = self.aff[c][person] + offer
        p_resp = p.delivery_rate[c] * sigmoid(p.response_base[c] + lin) * m
        p0 = -np.expm1(-self._organic_rate_integral(person, t, t + p.horizon_days))
        channel_factor = p.uplift_scale[c] * 2.0 * sigmoid(self.aff[c][person])
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

    def _contact_columns(self) -> dict[str, np.ndarray]:
        """The contacts of all waves as columns (empty ones when no wave reached anybody)."""
        if self.contacts:
            return {k: np.concatenate([c[k] for c in self.contacts]) for k in self.contacts[0]}
        ints = ("row", "person", "action")
        columns = {k: np.zeros(0, dtype=np.int64) for k in ints}
        columns["treated"] = np.zeros(0, dtype=bool)
        floats = ("t", "propensity", "p_response", "p_purchase_treated", "p_purchase_control")
        return columns | {k: np.zeros(0) for k in (*floats, "expected_value")}

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
            "region": decode(self.region, REGIONS),
            "loyalty_tier": decode(self.tier, TIERS),
            "signup_channel": decode(self.signup_channel, SIGNUP_CHANNELS),
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
            "uplift_type": decode(self.uplift_type, UPLIFT_TYPES),
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
        for kind in range(N_KINDS):
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
                "identifier_type": decode(kinds, KIND_TYPE),
                "role": decode(kinds, roles),
                "shared": pa.array(shared),
            }
        )
        if self.spec.chunk == 0:
            g = self.p.guest_cards
            guests = pa.table(
                {
                    "identifier": self.key_dictionary.slice(N_KINDS * n, g),
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
                ACTION_ID: decode(action, [a.action_id for a in ACTIONS]),
                CHANNEL: decode(action, [a.channel for a in ACTIONS]),
                "offer": decode(action, [a.offer for a in ACTIONS]),
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
                        ACTION_ID: decode(code, [a.action_id for a in ACTIONS]),
                        CHANNEL: decode(code, [a.channel for a in ACTIONS]),
                        "offer": decode(code, [a.offer for a in ACTIONS]),
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
