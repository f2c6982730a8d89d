"""The population: every person's profile and latent traits, correlated with each other."""

from __future__ import annotations

import numpy as np

from features.synthetic.draws import choice_rows, logit, sigmoid, wrapped_hour
from features.synthetic.purchases import ONLINE_HOUR_SD, STORE_HOURS
from features.synthetic.vocabulary import CATEGORIES, OUTBOUND, REGIONS, SECONDS, UPLIFT_TYPES


class Population:
    """A chunk's profile and latents (methods of `world._Chunk`, which holds the state)."""

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
        self.signup_channel = choice_rows(rng, np.exp(sc_logits))
        store_hour = rng.uniform(*STORE_HOURS, n) / 24.0
        online_hour = wrapped_hour(rng, self.pref_hour, ONLINE_HOUR_SD)
        self.signup_t = signup_day + np.where(self.signup_channel == 0, store_hour, online_hour)
        self.existing = existing

        # purchase intensity: lognormal with mean purchase_rate_mean
        s = p.purchase_rate_sigma
        zl = rng.normal(0.0, 1.0, n)
        self.lam = p.purchase_rate_mean * np.exp(s * zl - s * s / 2.0)
        self.zl = zl

        # loyalty tier, correlated with intensity
        member = rng.random(n) < sigmoid(logit(p.loyalty_share) + 0.8 * zl)
        gold = member & (
            rng.random(n) < sigmoid(logit(p.gold_share) + 1.0 * zl + rng.normal(0, 0.5, n))
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
        self.app_user = rng.random(n) < sigmoid(logit(p.app_share) - 0.8 * za + 0.3 * urban - 0.1)
        c0, c1, _ = p.cookie_shares
        u = rng.random(n) - 0.05 * np.clip(za, -2, 2)  # older persons use fewer browsers
        self.n_cookies = (u > c0).astype(np.int64) + (u > c0 + c1)
        online_logit = p.online_intercept - 0.7 * za + 0.4 * urban - 0.6 * rural
        self.online = sigmoid(online_logit + rng.normal(0.0, 1.0, n))
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
        self.uplift_type = choice_rows(rng, probs)
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
