"""The 360 view of one customer for the call centre: who they are on every channel, what they did
lately, what they consented to, what the features say in words, how they respond per channel,
and the best next step with its reasons. Real time: built from the online store and the event
history at each call, so an event accepted a moment ago is in it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from features.ingest.contract import ACTION_ID, CHANNEL
from features.ingest.history import EventHistory
from features.ingest.identity import masked
from serving.api_models import (
    ConsentState,
    Customer360,
    FeatureFact,
    Responsiveness,
    TimelineEntry,
)
from serving.reasons import FeatureWords
from serving.runtime import RequestError, ServingRuntime

# the features an agent reads first, in this order (those the store holds)
FACTS = [
    "email_response_rate",
    "email_engagement_days_since",
    "web_purchase_days_since",
    "app_purchase_days_since",
    "store_purchase_days_since",
    "all_purchase_count",
    "all_spend_sum",
    "monetary_mean",
    "preferred_hour",
    "preferred_dow",
]
PREFERENCE_FEATURE = "{channel}_engagement_decayed_90d"  # the preferred channel's measure

# an event in words: {where} the channel, {what} the action (or the channel), {cat} a category
_TEXTS = {
    "sent": "{what} sent ({where})",
    "holdout": "held out of {what} (the randomized control)",
    "delivered": "{what} delivered ({where})",
    "open": "opened {what}",
    "click": "clicked {what}",
    "visit": "visited {where}",
    "view": "viewed {cat}on {where}",
    "call": "called ({where})",
    "unsubscribe": "unsubscribed from {where}",
    "complaint": "complained ({where})",
    "consent_granted": "gave {where} consent",
    "consent_revoked": "withdrew {where} consent",
    "offer_accepted": "accepted {what} ({where})",
    "offer_declined": "declined {what} ({where})",
}


class UnknownCustomer(RequestError):
    """No customer has this key: the 360 view answers 404."""

    def __init__(self, key: str) -> None:
        super().__init__("customer", f"no customer is known by {key!r}", status=404)


class CustomerViews:
    """Builds the 360 view over the serving runtime and the event history."""

    def __init__(self, runtime: ServingRuntime, history: EventHistory) -> None:
        self.runtime = runtime
        self.history = history
        self.personal = list(runtime.data.identity.personal_types)
        self.words = FeatureWords(runtime.data)
        policy = runtime.policy
        outbound = [c.name for c in runtime.data.channels if c.outbound]
        # a representative action per outbound channel, for its P(response)
        first = {}
        for a in policy.catalogue.actions:
            first.setdefault(a.channel, a.id)
        self.probe_channels = [c for c in outbound if c in first]
        self.probe_actions = [first[c] for c in self.probe_channels]

    def view(self, key: str, timeline: int = 20) -> Customer360:
        key = self.runtime.lookup_key(key)  # a clear e-mail or phone: its hash
        decider = self.runtime.decider
        customer = decider.customer(key)
        if not customer.known:
            raise UnknownCustomer(masked(key, self.personal))
        cid = customer.customer_id
        row = decider.row(customer)
        arrays = decider.arrays(row)
        features = dict(zip(self.runtime.store.fs.names, row.features.tolist(), strict=True))
        recommendation = self.runtime.recommend(
            key, "call_centre", k=3, explain=True, context={"page": "customer-360"}, reserve=False
        )
        shown_key = masked(key, self.personal)
        recommendation.customer.key = shown_key
        history = self.history.of(cid)
        return Customer360(
            customer_id=cid,
            looked_up_by=shown_key,
            identifiers=[masked(i, self.personal) for i in self.runtime.store.identifiers(cid)],
            as_of=pd.Timestamp(row.as_of_us, unit="us", tz="UTC").isoformat(),
            consents=[
                ConsentState(
                    channel=c.channel,
                    given=c.given,
                    changed=None if c.changed is None else c.changed.isoformat(),
                )
                for c in history.consent()
            ],
            timeline=[self._entry(e) for e in history.recent(timeline).to_dict("records")],
            facts=self._facts(features),
            responsiveness=self._responsiveness(arrays),
            recommendation=recommendation,
        )

    def _entry(self, e: dict) -> TimelineEntry:
        amount = None if pd.isna(e["amount"]) else float(e["amount"])
        action = None if pd.isna(e[ACTION_ID]) else str(e[ACTION_ID])
        category = None if pd.isna(e["category"]) else str(e["category"])
        return TimelineEntry(
            event_id=str(e["event_id"]),
            ts=e["ts"].isoformat(),
            channel=e[CHANNEL],
            event_type=e["event_type"],
            action_id=action,
            amount=amount,
            category=category,
            text=_event_text(e["event_type"], e[CHANNEL], action, amount, category),
        )

    def _facts(self, features: dict[str, float]) -> list[FeatureFact]:
        facts = []
        for name in FACTS:
            if name in features:
                value = _finite(features[name])
                facts.append(
                    FeatureFact(feature=name, value=value, text=self.words.describe(name, value))
                )
        engagement = {
            c.name: features.get(PREFERENCE_FEATURE.format(channel=c.name), math.nan)
            for c in self.runtime.data.channels
        }
        engagement = {c: v for c, v in engagement.items() if v == v and v > 0}
        if engagement:
            best = max(engagement, key=engagement.get)
            text = f"engages most on {best.replace('_', ' ')} (last 90 days, weighted)"
            facts.append(FeatureFact(feature="preferred_channel", value=best, text=text))
        return facts

    def _responsiveness(self, arrays) -> list[Responsiveness]:
        """P(response) to a contact on each outbound channel, from the champion's response model
        (its first catalogue action on the channel), whether or not a contact is allowed now."""
        if not self.probe_channels or self.runtime.policy.bundle.response is None:
            return [Responsiveness(channel=c, p_response=None) for c in self.probe_channels]
        pairs = arrays.take(np.zeros(len(self.probe_channels), dtype=np.int64)).with_columns(
            {
                CHANNEL: np.array(self.probe_channels, dtype=object),
                ACTION_ID: np.array(self.probe_actions, dtype=object),
            }
        )
        p = self.runtime.policy.bundle.response_probability(pairs)
        return [
            Responsiveness(channel=c, p_response=_finite(v))
            for c, v in zip(self.probe_channels, p.tolist(), strict=True)
        ]


def _finite(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _event_text(
    event_type: str, channel: str, action: str | None, amount: float | None, category: str | None
) -> str:
    """One event in words: 'bought for 42.50 on store (home)', 'opened spring_sale'."""
    where = channel.replace("_", " ")
    if event_type == "purchase":
        money = "" if amount is None else f" for {amount:,.2f}"
        what = f" ({category})" if category else ""
        return f"bought{money} on {where}{what}"
    template = _TEXTS.get(event_type, event_type.replace("_", " ") + " ({where})")
    return template.format(
        where=where, what=action or where, cat=f"{category} " if category else ""
    )
