"""The world's vocabularies: channels, event types, categories, identifier kinds, time units."""

from __future__ import annotations

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


CHANNEL_CODE = {c: i for i, c in enumerate(CHANNELS)}


EVENT_CODE = {e: i for i, e in enumerate(EVENT_TYPES)}


BAD_CHANNEL = len(CHANNELS)  # code of the unknown channel written by dirty rows


# identifier kinds of a person; a key is addressed by (kind, person)
K_CRM, K_EMAIL, K_PHONE, K_LOYALTY, K_CARD, K_COOKIE0, K_COOKIE1, K_APP = range(8)


KIND_TYPE = ("crm", "email", "phone", "loyalty", "card", "device", "device", "device")


N_KINDS = len(KIND_TYPE)


GUEST = 100  # key code 100 + g: the shop's guest loyalty card g


NOKEY = 99  # key code of the malformed `nokey` rows


NONE = -1


# identifier kind each outbound channel's system keys its events by
CHANNEL_KIND = {
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
