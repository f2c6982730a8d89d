"""The service's request and response models: the contract channels depend on (see the README).

Field constraints live here, so BentoML validates a request before any endpoint runs and a
malformed one gets a 400 naming the field; the OpenAPI description (`/docs.json`) is built from
these models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Key = str


class Closed(BaseModel):
    """Unknown fields are errors, so a misspelt field is not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Context(Closed):
    """Where the request comes from, recorded with the decision."""

    page: str | None = Field(default=None, max_length=500, description="Web or app page.")
    store: str | None = Field(default=None, max_length=200, description="Store of a till.")
    agent: str | None = Field(default=None, max_length=200, description="Call-centre agent.")


class Components(Closed):
    """What a score is made of: lever x (P(buy | contacted) - P(buy | not)) x value x margin -
    cost under uplift scoring (P(response) in place of the difference under response scoring)."""

    p_response: float | None
    p_purchase_treated: float | None
    p_purchase_control: float | None
    uplift: float | None
    value: float | None
    margin: float | None
    cost: float
    lever: float | None


class RankedAction(Closed):
    action_id: str = Field(description="An action of the catalogue, or `do_nothing`.")
    channel: str = Field(description="The channel it is delivered on ('' for do nothing).")
    score: float = Field(description="Expected incremental profit, in money; do nothing is 0.")
    chosen: bool = Field(description="The action the decision took.")
    probability: float = Field(description="The probability the policy gave it.")
    components: Components
    reasons: list[str] = Field(default_factory=list, description="Up to three, in plain words.")


class CustomerRef(Closed):
    key: str = Field(description="The key as given.")
    customer_id: str
    known: bool = Field(description="False: a cold start on population priors.")


class RecommendResponse(Closed):
    decision_id: str
    customer: CustomerRef
    requesting_channel: str
    as_of: str = Field(description="Decision time (UTC, ISO 8601).")
    action_id: str = Field(description="The decision: an action, or `do_nothing`.")
    channel: str
    outcome: Literal["contact", "holdout", "nothing"] = Field(
        description="contact: deliver the action and report it as a `sent` event with event_id "
        "= decision_id and propensity = logged_propensity; holdout: the randomized control, do "
        "not contact (the service has logged the `holdout` event); nothing: no action is worth "
        "its cost or allowed."
    )
    send_hour: int | None = Field(description="Recommended send hour (UTC) for the action.")
    propensity: float = Field(description="Probability the policy chose this action.")
    logged_propensity: float = Field(
        description="Probability of this action and this outcome (contact or holdout)."
    )
    actions: list[RankedAction] = Field(description="Ranked allowed candidates, best first.")
    reasons: list[str] = Field(description="Why this decision, in plain words.")
    scoring: str
    model_version: str
    policy_version: str
    context: Context | None = None


class EventIn(Closed):
    """One contract event; field values are checked by the ingest's validation, row by row."""

    # lengths bounded like /recommend's customer: a megabyte identifier is an attack, not a key
    event_id: str | None = Field(default=None, max_length=200, description="Idempotency key.")
    ts: str | None = Field(
        default=None, max_length=64, description="When it happened, ISO 8601 (UTC if naive)."
    )
    customer_key: str | None = Field(
        default=None, max_length=500, description="`type:value` identifier."
    )
    link_key: str | None = Field(default=None, max_length=500)
    channel: str | None = Field(default=None, max_length=100)
    event_type: str | None = Field(default=None, max_length=100)
    action_id: str | None = Field(default=None, max_length=200)
    amount: float | None = None
    category: str | None = Field(default=None, max_length=200)
    propensity: float | None = None


class EventResult(Closed):
    index: int = Field(description="Position in the request's `events`.")
    event_id: str | None
    status: Literal["accepted", "rejected"]
    reason: str | None = Field(description="Why rejected (the validation's reason names).")


class EventsResponse(Closed):
    received: int
    accepted: int
    rejected: int
    by_reason: dict[str, int]
    results: list[EventResult]


class ForgetResponse(Closed):
    """What POST /forget erased: counts only, nothing personal (serving/erasure.py)."""

    erased_at: str
    identifiers: int
    customers: int
    rows_removed: int  # from the data directory's files (inputs, store, quarantine, logs)
    online_events: int
    input_examples: int


class ScoreDecision(Closed):
    decision_id: str
    customer: CustomerRef
    action_id: str
    channel: str
    outcome: Literal["contact", "holdout", "nothing"]
    score: float
    send_hour: int | None
    propensity: float
    logged_propensity: float
    components: Components
    reasons: list[str]


class ScoreResponse(Closed):
    as_of: str
    customers: int
    decisions: list[ScoreDecision]
    scoring: str
    model_version: str
    policy_version: str


class TimelineEntry(Closed):
    event_id: str
    ts: str = Field(description="When (UTC, ISO 8601).")
    channel: str
    event_type: str
    action_id: str | None
    amount: float | None
    category: str | None
    text: str = Field(description="The event in words.")


class ConsentState(Closed):
    channel: str
    given: bool = Field(description="Consent now: granted and not revoked since.")
    changed: str | None = Field(description="When it last changed (UTC); None: never.")


class FeatureFact(Closed):
    feature: str
    value: float | str | None
    text: str = Field(description="The feature in words.")


class Responsiveness(Closed):
    channel: str
    p_response: float | None = Field(description="P(response) to a contact on the channel.")


class Customer360(Closed):
    """One person across every channel, for the agent who has them on the line."""

    customer_id: str
    looked_up_by: str = Field(description="The key given, masked if personal.")
    identifiers: list[str] = Field(description="Every linked identifier, personal ones masked.")
    as_of: str
    consents: list[ConsentState]
    timeline: list[TimelineEntry] = Field(description="Most recent events, newest first.")
    facts: list[FeatureFact] = Field(description="Key features in words.")
    responsiveness: list[Responsiveness] = Field(description="Per outbound channel.")
    recommendation: RecommendResponse
