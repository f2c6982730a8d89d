"""The world's parameters, the spec a chunk's worker gets and the summary of a run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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


@dataclass(frozen=True)
class ChunkSpec:
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
